//! `GET|PUT /api/v1/branding`: logo, colours (`#RRGGBB`), and the white-label
//! settings (custom domain, CSS, sender) that only tiers with `white_label`
//! may set. A custom domain names one tenant among all: taken is 409, without
//! saying by whom; once set, the registry feed routes it on every node.

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{reply, ControlError, ControlState};
use crate::auth::Principal;
use crate::db::DbError;
use crate::http::response::Body;

/// PUT replaces every setting: what is left out is cleared.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branding {
    logo_url: Option<String>,
    favicon_url: Option<String>,
    primary_color: Option<String>,
    secondary_color: Option<String>,
    accent_color: Option<String>,
    custom_domain: Option<String>,
    custom_css: Option<String>,
    email_from_name: Option<String>,
    email_from_address: Option<String>,
}

const COLUMNS: &str = "logo_url, favicon_url, primary_color, secondary_color, accent_color, custom_domain, \
                       custom_css, email_from_name, email_from_address";
const MAX_CSS_BYTES: usize = 32 << 10;

pub async fn get(state: &ControlState, caller: &Principal) -> Result<Response<Body>, ControlError> {
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let row =
        tx.query_opt(&format!("SELECT {COLUMNS} FROM tenant_branding WHERE organization_id = $1"), &[&org]).await?;
    tx.commit().await?;
    let value = |i: usize| row.as_ref().and_then(|r| r.get::<_, Option<String>>(i));
    reply(StatusCode::OK, as_json(value))
}

pub async fn put(state: &ControlState, caller: &Principal, mut b: Branding) -> Result<Response<Body>, ControlError> {
    validate(&mut b)?;
    let tier = &caller.org.tier;
    let white_label = b.custom_domain.is_some()
        || b.custom_css.is_some()
        || b.email_from_name.is_some()
        || b.email_from_address.is_some();
    if white_label && !tier.white_label {
        return Err(ControlError::NotInTier { feature: "white_label", tier: tier.name });
    }
    let org = caller.org.id.as_str();
    let tx = state.db()?.tenant(org).await?;
    let fields = [
        &b.logo_url,
        &b.favicon_url,
        &b.primary_color,
        &b.secondary_color,
        &b.accent_color,
        &b.custom_domain,
        &b.custom_css,
        &b.email_from_name,
        &b.email_from_address,
    ];
    let stored = tx
        .execute(
            &format!(
                "INSERT INTO tenant_branding (organization_id, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (organization_id) DO UPDATE SET logo_url = $2, favicon_url = $3, primary_color = $4, \
                 secondary_color = $5, accent_color = $6, custom_domain = $7, custom_css = $8, \
                 email_from_name = $9, email_from_address = $10, updated_at = now()"
            ),
            &[&org, fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], fields[6], fields[7], fields[8]],
        )
        .await;
    match stored {
        Err(DbError::Conflict { .. }) => return Err(ControlError::Conflict("custom domain")),
        other => other?,
    };
    super::apps::audit(&tx, org, caller, "branding_changed", org).await?;
    tx.commit().await?;
    reply(StatusCode::OK, as_json(|i| fields[i].clone()))
}

fn as_json(value: impl Fn(usize) -> Option<String>) -> serde_json::Value {
    json!({
        "logo_url": value(0), "favicon_url": value(1), "primary_color": value(2), "secondary_color": value(3),
        "accent_color": value(4), "custom_domain": value(5), "custom_css": value(6),
        "email_from_name": value(7), "email_from_address": value(8),
    })
}

fn validate(b: &mut Branding) -> Result<(), ControlError> {
    let invalid = |field, reason| ControlError::Invalid { field, reason };
    for (field, colour) in [
        ("primary_color", &b.primary_color),
        ("secondary_color", &b.secondary_color),
        ("accent_color", &b.accent_color),
    ] {
        if colour.as_deref().is_some_and(|c| !is_colour(c)) {
            return Err(invalid(field, "must be #RRGGBB"));
        }
    }
    for (field, url) in [("logo_url", &b.logo_url), ("favicon_url", &b.favicon_url)] {
        if url
            .as_deref()
            .is_some_and(|u| !u.starts_with("https://") || u.len() > 2048 || u.contains(char::is_whitespace))
        {
            return Err(invalid(field, "must be an https:// URL of at most 2048 bytes"));
        }
    }
    if let Some(domain) = &mut b.custom_domain {
        *domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_domain(domain) {
            return Err(invalid("custom_domain", "must be a host name such as events.example.com"));
        }
    }
    if b.custom_css.as_ref().is_some_and(|css| css.len() > MAX_CSS_BYTES) {
        return Err(invalid("custom_css", "must be at most 32 KiB"));
    }
    if let Some(address) = &b.email_from_address {
        super::orgs::validate_email(address).map_err(|_| invalid("email_from_address", "is not an email address"))?;
    }
    if b.email_from_name.as_ref().is_some_and(|n| n.chars().count() > 255 || n.chars().any(char::is_control)) {
        return Err(invalid("email_from_name", "must be at most 255 characters, no control characters"));
    }
    Ok(())
}

fn is_colour(c: &str) -> bool {
    c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_domain(d: &str) -> bool {
    d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn colours_and_domains() {
        assert!(super::is_colour("#A0b1C2") && !super::is_colour("#12345") && !super::is_colour("123456A"));
        assert!(super::is_domain("events.acme.example") && !super::is_domain("localhost"));
        assert!(!super::is_domain("-x.example") && !super::is_domain("a..example") && !super::is_domain("é.example"));
    }
}
