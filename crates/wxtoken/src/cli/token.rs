//! `wxtoken token APPID` and `wxtoken ticket APPID [--type jsapi|wx_card]`: print the current token
//! or JS-SDK ticket of an authorizer or direct account, for scripts. Read from the store (the
//! running server keeps it there); exits non-zero, printing nothing on standard output, when there
//! is none valid for at least `refresh.serve_margin` (`refresh.ticket_serve_margin` for tickets).

use anyhow::{Context, bail};
use secrecy::ExposeSecret;

use super::context::{StoreArgs, StoreContext as Ctx};
use crate::model::{Appid, ComponentAppid, Credential, CredentialKind, SecretSlot, Timestamp};
use crate::tokens::plan;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The authorizer's or direct account's appid.
    pub appid: String,
    /// Print JSON (appid, access_token, expires_at, source) instead of the bare token.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct TicketArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The authorizer's or direct account's appid.
    pub appid: String,
    /// Which ticket: `jsapi` (wx.config) or `wx_card` (cardExt).
    #[arg(long = "type", default_value = "jsapi", value_parser = ["jsapi", "wx_card"])]
    pub kind: String,
    /// Print JSON (appid, type, ticket, expires_at) instead of the bare ticket.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let appid = Appid::parse(&args.appid).with_context(|| format!("appid {}", args.appid))?;
    let ctx = args.store.open().await?;
    let component = ctx.component(args.store.component.as_deref()).await?;
    let accounts = accounts(&component, &appid);
    let Some((credential, stored)) = stored(&ctx, &accounts).await? else {
        bail!("no token stored for {appid} under {component}");
    };
    // What the server would serve: a revoked authorizer only its appsecret fallback.
    let status = match credential.kind {
        CredentialKind::Authorizer => ctx
            .store
            .authorizers()
            .get_authorizer(&component, &appid)
            .await?
            .map(|a| a.status),
        _ => None,
    };
    if !plan::serves(status, stored.source) {
        bail!("{appid} is revoked and has no appsecret fallback token");
    }
    let token = open_servable(&ctx, &credential, &stored, ctx.config.refresh.serve_margin)?;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "appid": appid.as_str(),
                "access_token": token.expose_secret(),
                "expires_at": stored.expires_at.as_millis() / 1000,
                "source": stored.source.as_str(),
            })
        );
    } else {
        outln!("{}", token.expose_secret());
    }
    Ok(())
}

pub async fn run_ticket(args: TicketArgs) -> anyhow::Result<()> {
    let appid = Appid::parse(&args.appid).with_context(|| format!("appid {}", args.appid))?;
    let kind = CredentialKind::parse_ticket(&args.kind)?;
    let ctx = args.store.open().await?;
    let component = ctx.component(args.store.component.as_deref()).await?;
    let tickets: Vec<_> = accounts(&component, &appid)
        .iter()
        .map(|account| account.ticket(kind))
        .collect();
    let Some((credential, stored)) = stored(&ctx, &tickets).await? else {
        bail!(
            "no {} ticket stored for {appid} under {component}: a ticket is fetched at its first \
             read (GET /v1/tickets/{appid}/{} on a running server)",
            kind.as_str(),
            kind.as_str()
        );
    };
    let margin = ctx.config.refresh.ticket_serve_margin;
    let ticket = open_servable(&ctx, &credential, &stored, margin)?;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "appid": appid.as_str(),
                "type": kind.as_str(),
                "ticket": ticket.expose_secret(),
                "expires_at": stored.expires_at.as_millis() / 1000,
            })
        );
    } else {
        outln!("{}", ticket.expose_secret());
    }
    Ok(())
}

/// The credentials `appid` may be under: an authorizer, else a direct account.
fn accounts(component: &ComponentAppid, appid: &Appid) -> [Credential; 2] {
    [
        Credential::authorizer(component, appid),
        Credential::direct(component, appid),
    ]
}

/// The first of `credentials` with a stored token or ticket.
async fn stored(
    ctx: &Ctx,
    credentials: &[Credential],
) -> anyhow::Result<Option<(Credential, crate::model::NewAccessToken)>> {
    for credential in credentials {
        if let Some(record) = ctx.store.tokens().get_token(credential).await?
            && let Some(token) = record.token
        {
            return Ok(Some((credential.clone(), token)));
        }
    }
    Ok(None)
}

/// The stored value opened, if it is valid for at least `margin`.
fn open_servable(
    ctx: &Ctx,
    credential: &Credential,
    stored: &crate::model::NewAccessToken,
    margin: std::time::Duration,
) -> anyhow::Result<secrecy::SecretString> {
    let now = Timestamp::now();
    if !plan::servable(now.as_millis(), stored.expires_at.as_millis(), margin) {
        bail!(
            "the stored {} of {} expires at {}: is `wxtoken serve` running?",
            if credential.kind.is_ticket() {
                "ticket"
            } else {
                "token"
            },
            credential.appid,
            stored.expires_at
        );
    }
    Ok(ctx
        .vault
        .open_string(SecretSlot::AccessToken { credential }, &stored.sealed)?)
}
