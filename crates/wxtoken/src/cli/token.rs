//! `wxtoken token APPID`: print the current token of an authorizer or direct account, for scripts.
//! Read from the store (the running server keeps it there); exits non-zero, printing nothing on
//! standard output, when there is no token valid for at least `refresh.serve_margin`.

use anyhow::{Context, bail};

use super::context::StoreArgs;
use crate::model::{Appid, Credential, CredentialKind, SecretSlot, Timestamp};
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

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let appid = Appid::parse(&args.appid).with_context(|| format!("appid {}", args.appid))?;
    let ctx = args.store.open().await?;
    let component = ctx.component(args.store.component.as_deref()).await?;
    let mut found = None;
    for credential in [
        Credential::authorizer(&component, &appid),
        Credential::direct(&component, &appid),
    ] {
        if let Some(record) = ctx.store.tokens().get_token(&credential).await?
            && let Some(token) = record.token
        {
            found = Some((credential, token));
            break;
        }
    }
    let Some((credential, stored)) = found else {
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
    let now = Timestamp::now();
    if !plan::servable(
        now.as_millis(),
        stored.expires_at.as_millis(),
        ctx.config.refresh.serve_margin,
    ) {
        bail!(
            "the stored token of {appid} expires at {}: is `wxtoken serve` running?",
            stored.expires_at
        );
    }
    let token = ctx.vault.open_string(
        SecretSlot::AccessToken {
            credential: &credential,
        },
        &stored.sealed,
    )?;
    use secrecy::ExposeSecret;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "appid": appid.as_str(),
                "access_token": token.expose_secret(),
                "expires_at": stored.expires_at.as_millis() / 1000,
                "source": stored.source.as_str(),
            })
        );
    } else {
        println!("{}", token.expose_secret());
    }
    Ok(())
}
