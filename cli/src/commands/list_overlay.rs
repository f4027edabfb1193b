//! `cloudlet list-overlay`: the overlays created on (and stored by) the cloudlet.

use crate::ctx::Ctx;
use crate::output;
use cloudlet_api::Overlay;

/// Runs the command.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let value = ctx.client()?.get("/api/v1/overlays")?;
    if ctx.json() {
        output::print_json(&value);
        return Ok(());
    }
    let overlays: Vec<Overlay> = serde_json::from_value(value)?;
    if overlays.is_empty() {
        output::print("no overlays (create one with `cloudlet overlay BASE`)");
        return Ok(());
    }
    let mut rows = vec![[
        "ID",
        "BASE",
        "SIZE",
        "CONTENT",
        "MEM PAGES",
        "DISK CHUNKS",
        "CREATED",
    ]
    .map(String::from)
    .to_vec()];
    for o in &overlays {
        rows.push(vec![
            o.id.clone(),
            output::short_id(&o.base_id),
            output::size(o.file_size),
            if o.disk_only { "disk" } else { "memory+disk" }.into(),
            o.modified_memory_pages.to_string(),
            o.modified_disk_chunks.to_string(),
            output::time(&o.created_at),
        ]);
    }
    output::print(output::table(&rows).trim_end());
    Ok(())
}
