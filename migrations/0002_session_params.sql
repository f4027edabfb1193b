-- What a session needs to finish its work (e.g. the name and guest ports of the base being
-- created, the VM spec it runs), and the results of customization script lines.
ALTER TABLE sessions ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sessions ADD COLUMN script_results TEXT NOT NULL DEFAULT '[]';
