//! `cloudlet token create | list | revoke`: the daemon's API tokens (needs an admin
//! token). A device gets its own token this way, on the cloudlet, out of band.

use reqwest::Method;
use serde_json::json;

use crate::client::segment;
use crate::ctx::Ctx;
use crate::output;
use cloudlet_api::{CreatedToken, Token};

/// `cloudlet token ...`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: TokenCommand,
}

/// What to do with tokens.
#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token; its secret is printed this once (the daemon keeps only a hash).
    Create(CreateArgs),
    /// List the tokens (never their secrets), revoked ones included.
    List,
    /// Revoke a token (by id or name): it is refused from its next request on.
    Revoke(RevokeArgs),
}

/// Flags of `token create`.
#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// `device` (synthesis, its own sessions and overlays) or `admin` (everything).
    #[arg(long, value_parser = ["device", "admin"])]
    role: String,
    /// Unique among live tokens, e.g. the device's name (`phone-7`).
    #[arg(long)]
    name: String,
}

/// Flags of `token revoke`.
#[derive(Debug, clap::Args)]
struct RevokeArgs {
    /// The token's id or name. (Not called `token`: that id is the global `--token`.)
    #[arg(value_name = "ID|NAME")]
    selector: String,
}

/// Runs the command.
pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    match &args.command {
        TokenCommand::Create(a) => create(a, ctx),
        TokenCommand::List => list(ctx),
        TokenCommand::Revoke(a) => revoke(a, ctx),
    }
}

fn create(args: &CreateArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let body = json!({ "name": args.name, "role": args.role });
    let value = ctx
        .client()?
        .json(Method::POST, "/api/v1/tokens", Some(&body))?;
    if ctx.json() {
        output::print_json(&value);
        return Ok(());
    }
    let t: CreatedToken = serde_json::from_value(value)?;
    output::print(&format!(
        "created {} token `{}` ({})\n\n{}\n\n\
         This secret is shown only now. Give it to the device out of band; it sends it as\n\
         `Authorization: Bearer <token>`, or with this CLI: `--token`, CLOUDLET_TOKEN, or a\n\
         file (mode 0600) named by --token-file / CLOUDLET_TOKEN_FILE.\n\
         Revoke it with `cloudlet token revoke {}`.",
        t.role, t.name, t.id, t.token, t.name
    ));
    Ok(())
}

fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let value = ctx.client()?.get("/api/v1/tokens")?;
    if ctx.json() {
        output::print_json(&value);
        return Ok(());
    }
    let tokens: Vec<Token> = serde_json::from_value(value)?;
    let mut rows = vec![["ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED"]
        .map(String::from)
        .to_vec()];
    let when = |t: &Option<String>| t.as_deref().map_or_else(|| "-".into(), output::time);
    for t in &tokens {
        rows.push(vec![
            t.id.clone(),
            t.name.clone(),
            t.role.to_string(),
            output::time(&t.created_at),
            when(&t.last_used_at),
            when(&t.revoked_at),
        ]);
    }
    output::print(output::table(&rows).trim_end());
    Ok(())
}

fn revoke(args: &RevokeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let path = format!("/api/v1/tokens/{}", segment(&args.selector));
    let value = ctx.client()?.json(Method::DELETE, &path, None)?;
    if ctx.json() {
        output::print_json(&value);
        return Ok(());
    }
    let t: Token = serde_json::from_value(value)?;
    output::print(&format!(
        "revoked {} token `{}` ({}): it is refused from now on",
        t.role, t.name, t.id
    ));
    Ok(())
}
