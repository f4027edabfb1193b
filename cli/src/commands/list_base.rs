//! `cloudlet list-base`: the base VMs on the cloudlet.

use crate::ctx::Ctx;
use crate::output;
use cloudlet_api::Base;

/// Runs the command.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let value = ctx.client()?.get("/api/v1/bases")?;
    if ctx.json() {
        output::print_json(&value);
        return Ok(());
    }
    let bases: Vec<Base> = serde_json::from_value(value)?;
    if bases.is_empty() {
        output::print("no base VMs (create one with `cloudlet base DISK`)");
        return Ok(());
    }
    let mut rows = vec![["NAME", "ID", "DISK", "MEMORY", "PORTS", "CREATED"]
        .map(String::from)
        .to_vec()];
    for b in &bases {
        let ports: Vec<String> = b.guest_ports.iter().map(u16::to_string).collect();
        rows.push(vec![
            b.name.clone(),
            output::short_id(&b.id),
            output::size(b.disk_size),
            output::size(b.memory_size),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
            output::time(&b.created_at),
        ]);
    }
    output::print(output::table(&rows).trim_end());
    Ok(())
}
