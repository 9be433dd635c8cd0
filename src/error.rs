//! Every way a request can fail, and the one place each becomes an answer.
//!
//! Each stage has its own error type and knows nothing of HTTP: routing and
//! bodies ([`RouteError`], [`BodyError`]), authentication ([`AuthError`]),
//! limits ([`LimitError`]), parsing and validation ([`ParseError`],
//! [`EventsRejected`]), the spool ([`SpoolError`]) and the control plane
//! ([`ControlError`]). [`Error`] gathers them; [`Error::problem`] decides the
//! status, the machine-readable `code` clients branch on, the message, the
//! extra fields SPEC §3 promises (tier and limit on 429, `upgrade_url` on 402)
//! and `Retry-After`. The control plane's 404/409/422 and database failures
//! join as variants of [`ControlError`], not as strings.

use std::borrow::Cow;
use std::time::Duration;

use hyper::StatusCode;

pub use crate::auth::AuthError;
pub use crate::control::ControlError;
pub use crate::db::DbError;
pub use crate::event::parse::ParseError;
pub use crate::event::EventsRejected;
pub use crate::http::body::BodyError;
use crate::http::response::{self, Body, Problem};
pub use crate::http::RouteError;
pub use crate::limits::LimitError;
pub use crate::spool::SpoolError;

/// Declares [`Error`] with one variant per stage and the `From` each `?` uses.
macro_rules! stage_errors {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// Why a request failed, as the stage that refused it said.
        #[derive(Debug)]
        pub enum Error {
            $($variant($ty),)*
        }
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(e)
            }
        })*
    };
}

stage_errors!(
    Route(RouteError),
    Body(BodyError),
    Auth(AuthError),
    Limit(LimitError),
    Parse(ParseError),
    Rejected(EventsRejected),
    Spool(SpoolError),
    Control(ControlError),
);

/// How long a client should wait before retrying when the spool is full.
const SPOOL_FULL_RETRY_AFTER: Duration = Duration::from_secs(5);
/// A disk error may be momentary (the writer moves to a new segment); so is a full body budget.
const MOMENTARY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Error {
    pub fn into_response(self) -> hyper::Response<Body> {
        response::problem(&self.problem())
    }

    /// The `code` alone, for metrics labels: no message is built.
    pub fn code(&self) -> &'static str {
        self.problem_parts().1
    }

    pub fn problem(&self) -> Problem {
        let (status, code, message) = self.problem_parts();
        let mut p = Problem::new(status, code, message);
        match self {
            Error::Route(RouteError::MethodNotAllowed { allow }) => p.allow = Some(allow.clone()),
            Error::Body(BodyError::TooLarge { limit, .. }) | Error::Parse(ParseError::TooManyEvents { limit }) => {
                p.field("limit", *limit);
            }
            Error::Body(BodyError::Overloaded) => p.retry_after(MOMENTARY_RETRY_AFTER),
            Error::Auth(AuthError::TooManyAttempts { retry_after }) => p.retry_after(*retry_after),
            Error::Limit(LimitError::RateLimited { tier, limit_per_sec, retry_after }) => {
                p.retry_after(*retry_after);
                let secs = p.retry_after.unwrap_or(1);
                p.field("tier", *tier).field("limit", *limit_per_sec).field("retry_after", secs);
            }
            Error::Limit(LimitError::ApiRateLimited { tier, limit_per_minute, retry_after })
            | Error::Control(ControlError::Limited(LimitError::ApiRateLimited {
                tier,
                limit_per_minute,
                retry_after,
            })) => {
                p.retry_after(*retry_after);
                let secs = p.retry_after.unwrap_or(1);
                p.field("tier", *tier)
                    .field("limit", *limit_per_minute)
                    .field("window", "minute")
                    .field("retry_after", secs);
            }
            Error::Limit(LimitError::QuotaExceeded { tier, limit_per_month }) => {
                p.field("tier", *tier).field("limit", *limit_per_month).field("upgrade_url", "/billing/upgrade");
            }
            Error::Rejected(EventsRejected(errors)) => {
                p.field("accepted", 0).field("rejected", errors.len()).field("errors", response::rejections(errors));
            }
            Error::Spool(SpoolError::Full) => p.retry_after(SPOOL_FULL_RETRY_AFTER),
            Error::Spool(SpoolError::Io(_) | SpoolError::Closed) => p.retry_after(MOMENTARY_RETRY_AFTER),
            Error::Control(ControlError::Body(BodyError::TooLarge { limit, .. })) => {
                p.field("limit", *limit);
            }
            Error::Control(
                ControlError::Body(BodyError::Overloaded)
                | ControlError::Db(DbError::Unavailable(_))
                | ControlError::StatsUnavailable,
            ) => p.retry_after(MOMENTARY_RETRY_AFTER),
            Error::Control(ControlError::TooManyAttempts { retry_after }) => p.retry_after(*retry_after),
            Error::Control(ControlError::Invalid { field, .. }) => {
                p.field("field", *field);
            }
            Error::Control(ControlError::NotInTier { feature, tier }) => {
                p.field("tier", *tier).field("feature", *feature).field("upgrade_url", "/billing/upgrade");
            }
            Error::Control(ControlError::TierLimit { what, limit, tier }) => {
                p.field("tier", *tier)
                    .field("limit", *limit)
                    .field("resource", *what)
                    .field("upgrade_url", "/billing/upgrade");
            }
            _ => {}
        }
        p
    }

    fn problem_parts(&self) -> (StatusCode, &'static str, Cow<'static, str>) {
        use StatusCode as S;
        let fixed = |status, code, message: &'static str| (status, code, Cow::Borrowed(message));
        match self {
            Error::Route(e) => match e {
                RouteError::NotFound => fixed(S::NOT_FOUND, "not_found", "No such route"),
                RouteError::MethodNotAllowed { .. } => {
                    fixed(S::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed")
                }
                RouteError::HeaderTooLarge { max } => (
                    S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "header_too_large",
                    format!("A request header is longer than {max} bytes").into(),
                ),
                RouteError::OriginNotAllowed => {
                    fixed(S::FORBIDDEN, "origin_not_allowed", "This origin may not call this route")
                }
            },
            Error::Body(e) => body_problem(e),
            Error::Auth(e) => auth_problem(e),
            Error::Limit(LimitError::RateLimited { .. } | LimitError::ApiRateLimited { .. })
            | Error::Control(ControlError::Limited(_)) => {
                fixed(S::TOO_MANY_REQUESTS, "rate_limited", "Rate limit exceeded")
            }
            Error::Limit(LimitError::QuotaExceeded { .. }) => {
                fixed(S::PAYMENT_REQUIRED, "quota_exceeded", "Monthly event quota exceeded")
            }
            Error::Parse(e) => parse_problem(e),
            // The one event's own code, or `invalid_events` with each event's error.
            Error::Rejected(EventsRejected(errors)) => match errors.as_slice() {
                [(_, only)] => (S::BAD_REQUEST, only.code, only.message.clone().into()),
                _ => fixed(S::BAD_REQUEST, "invalid_events", "Every event in the batch is invalid"),
            },
            Error::Spool(SpoolError::Full) => fixed(
                S::SERVICE_UNAVAILABLE,
                "spool_full",
                "The edge holds as many unshipped events as it may; retry later",
            ),
            Error::Spool(SpoolError::Io(_) | SpoolError::Closed) => {
                fixed(S::SERVICE_UNAVAILABLE, "spool_unavailable", "The edge could not store the events; retry")
            }
            Error::Control(e) => control_problem(e),
        }
    }
}

fn body_problem(e: &BodyError) -> (StatusCode, &'static str, Cow<'static, str>) {
    use StatusCode as S;
    match e {
        BodyError::UnsupportedEncoding => (
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            "Content-Encoding must be gzip, deflate, zstd or identity".into(),
        ),
        BodyError::UnsupportedMediaType => (
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json or application/x-ndjson".into(),
        ),
        BodyError::NdjsonNeedsBatchRoute => {
            (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "NDJSON goes to /v1/events/batch".into())
        }
        BodyError::TooLarge { what, limit } => {
            (S::PAYLOAD_TOO_LARGE, "payload_too_large", format!("{what} exceeds {limit} bytes").into())
        }
        BodyError::Timeout => (S::REQUEST_TIMEOUT, "body_timeout", "The request body did not arrive in time".into()),
        BodyError::Undecodable { encoding, detail } => {
            (S::BAD_REQUEST, "invalid_encoding", format!("The {encoding} body could not be decoded: {detail}").into())
        }
        BodyError::ReadFailed(detail) => {
            (S::BAD_REQUEST, "body_read_error", format!("Reading the body failed: {detail}").into())
        }
        BodyError::Overloaded => (
            S::SERVICE_UNAVAILABLE,
            "overloaded",
            "The edge is holding as many request bytes as it may; retry shortly".into(),
        ),
    }
}

fn control_problem(e: &ControlError) -> (StatusCode, &'static str, Cow<'static, str>) {
    use StatusCode as S;
    match e {
        ControlError::InvalidDate { field } => {
            (S::BAD_REQUEST, "invalid_date", format!("{field} must be YYYY-MM-DD").into())
        }
        ControlError::Limited(_) => (S::TOO_MANY_REQUESTS, "rate_limited", "Rate limit exceeded".into()),
        ControlError::InvalidRange => (S::BAD_REQUEST, "invalid_range", "from is after to".into()),
        ControlError::Body(e) => body_problem(e),
        ControlError::InvalidJson(detail) => {
            (S::BAD_REQUEST, "invalid_json", format!("The body is not the JSON this route takes: {detail}").into())
        }
        ControlError::Invalid { field, reason } => {
            (S::UNPROCESSABLE_ENTITY, "validation_failed", format!("{field} {reason}").into())
        }
        ControlError::NotFound(what) => (S::NOT_FOUND, "not_found", format!("No such {what}").into()),
        ControlError::Conflict(what) => (S::CONFLICT, "conflict", format!("This {what} is already in use").into()),
        ControlError::NotInTier { feature, tier } => (
            S::PAYMENT_REQUIRED,
            "not_in_tier",
            format!("The {tier} tier does not include {feature}; upgrade for it").into(),
        ),
        ControlError::Forbidden(why) => (S::FORBIDDEN, "forbidden", format!("Not allowed: {why}").into()),
        ControlError::LastSuperAdmin => {
            (S::CONFLICT, "last_super_admin", "The organization's last super_admin cannot be demoted or removed".into())
        }
        ControlError::TierLimit { what, limit, tier } => (
            S::PAYMENT_REQUIRED,
            "tier_limit",
            format!("The {tier} tier allows {limit} {what}; upgrade for more").into(),
        ),
        ControlError::Unavailable => (
            S::SERVICE_UNAVAILABLE,
            "control_plane_unavailable",
            "The control plane needs PostgreSQL: set DATABASE_URL".into(),
        ),
        ControlError::InvalidCredentials => {
            (S::UNAUTHORIZED, "invalid_credentials", "The email, password or token is not valid".into())
        }
        ControlError::TooManyAttempts { .. } => (
            S::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "Too many failed logins for this account or address; retry later".into(),
        ),
        ControlError::OrganizationInactive => {
            (S::FORBIDDEN, "organization_inactive", "The organization is suspended or deleted".into())
        }
        ControlError::StatsUnavailable => {
            (S::SERVICE_UNAVAILABLE, "stats_unavailable", "ClickHouse did not answer; retry shortly".into())
        }
        ControlError::LoginUnavailable => {
            (S::SERVICE_UNAVAILABLE, "login_unavailable", "Logins need a signing key: set JWT_SECRET".into())
        }
        ControlError::Db(DbError::Unavailable(_)) => {
            (S::SERVICE_UNAVAILABLE, "database_unavailable", "PostgreSQL did not answer; retry shortly".into())
        }
        ControlError::Db(DbError::Conflict { .. }) => (S::CONFLICT, "conflict", "This value is already in use".into()),
        ControlError::Db(DbError::RowSecurity) => {
            (S::FORBIDDEN, "forbidden", "The row belongs to another organisation".into())
        }
        ControlError::Db(DbError::Invalid(_)) => {
            (S::UNPROCESSABLE_ENTITY, "validation_failed", "A value is out of range or malformed".into())
        }
        ControlError::Db(DbError::Other(_)) => {
            (S::INTERNAL_SERVER_ERROR, "internal_error", "The control plane failed; this is logged".into())
        }
    }
}

fn auth_problem(e: &AuthError) -> (StatusCode, &'static str, Cow<'static, str>) {
    use StatusCode as S;
    let (status, code, message): (_, _, Cow<'static, str>) = match e {
        AuthError::InvalidHeader(h) => (S::BAD_REQUEST, "invalid_header", format!("{h} is not visible ASCII").into()),
        AuthError::RepeatedCredential(h) => {
            (S::UNAUTHORIZED, "ambiguous_credentials", format!("{h} is sent more than once").into())
        }
        AuthError::TwoCredentials => {
            (S::UNAUTHORIZED, "ambiguous_credentials", "Send either Authorization or X-Api-Key, not both".into())
        }
        AuthError::ConflictingSelector(h) => {
            (S::BAD_REQUEST, "conflicting_selectors", format!("{h} is sent with different values").into())
        }
        AuthError::ConflictingHosts => (
            S::BAD_REQUEST,
            "conflicting_selectors",
            "The Host header and the request target name different hosts".into(),
        ),
        AuthError::MissingCredentials => {
            (S::UNAUTHORIZED, "missing_credentials", "Send Authorization: Bearer <JWT> or X-Api-Key: <sdk key>".into())
        }
        AuthError::MalformedAuthorization => {
            (S::UNAUTHORIZED, "invalid_authorization", "Authorization must be 'Bearer <token>'".into())
        }
        AuthError::UnknownKey => (S::UNAUTHORIZED, "invalid_api_key", "Unknown SDK key".into()),
        AuthError::Jwt(e) => (S::UNAUTHORIZED, e.code(), e.message().into()),
        AuthError::TooManyAttempts { .. } => (
            S::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "Too many wrong credentials from this address; retry later".into(),
        ),
        AuthError::OrganizationRequired => {
            (S::BAD_REQUEST, "organization_required", "The operator token needs X-Organization-ID".into())
        }
        AuthError::UnknownOrganization => (S::FORBIDDEN, "organization_not_found", "Organization not found".into()),
        AuthError::TenantMismatch => (
            S::FORBIDDEN,
            "tenant_mismatch",
            "The tenant selector names another organisation than the credential".into(),
        ),
        AuthError::Suspended => (S::FORBIDDEN, "organization_inactive", "Organization is suspended".into()),
        AuthError::Deleted => (S::FORBIDDEN, "organization_deleted", "Organization is deleted".into()),
        AuthError::WriteOnlyCredential => {
            (S::FORBIDDEN, "write_only_credential", "SDK keys can only write events; use a user token".into())
        }
        AuthError::TokenRevoked => (S::UNAUTHORIZED, "token_revoked", "The token was revoked; log in again".into()),
        AuthError::OperatorOnly => {
            (S::FORBIDDEN, "operator_only", "Only the platform operator's token may do this".into())
        }
        AuthError::MissingPermission(permission) => {
            (S::FORBIDDEN, "insufficient_permission", format!("The token lacks the {permission} permission").into())
        }
    };
    (status, code, message)
}

fn parse_problem(e: &ParseError) -> (StatusCode, &'static str, Cow<'static, str>) {
    use StatusCode as S;
    match e {
        ParseError::InvalidJson(detail) => (S::BAD_REQUEST, "invalid_json", format!("Invalid JSON: {detail}").into()),
        ParseError::NotAnObject => (S::BAD_REQUEST, "invalid_body", "Expected one JSON object".into()),
        ParseError::NotABatch => (S::BAD_REQUEST, "invalid_body", "Expected {\"events\":[...]} or a JSON array".into()),
        ParseError::InvalidSentAt => {
            (S::BAD_REQUEST, "invalid_sent_at", "sent_at must be RFC 3339 or epoch milliseconds".into())
        }
        ParseError::TooManyEvents { limit } => {
            (S::PAYLOAD_TOO_LARGE, "too_many_events", format!("a batch holds at most {limit} events").into())
        }
        ParseError::EmptyBatch => (S::BAD_REQUEST, "empty_batch", "The batch holds no events".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Rejection;
    use serde_json::Value;

    #[test]
    fn retry_after_rounds_up_and_repeats_in_the_body() {
        let e = Error::from(LimitError::RateLimited {
            tier: "starter",
            limit_per_sec: 1000,
            retry_after: Duration::from_millis(2500),
        });
        let p = e.problem();
        assert_eq!((p.status, p.code, p.retry_after), (StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some(3)));
        let fields: serde_json::Map<_, _> = p.fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(Value::Object(fields), serde_json::json!({"tier": "starter", "limit": 1000, "retry_after": 3}));
        let p = Error::from(AuthError::TooManyAttempts { retry_after: Duration::from_millis(1) }).problem();
        assert_eq!(p.retry_after, Some(1));
    }

    #[test]
    fn a_single_rejected_event_answers_with_its_own_code() {
        let one = EventsRejected(vec![(0, Rejection::new("missing_field", "device_id is required"))]);
        let p = Error::from(one).problem();
        assert_eq!(
            (p.status, p.code, p.message.as_ref()),
            (StatusCode::BAD_REQUEST, "missing_field", "device_id is required")
        );
        let two = EventsRejected(vec![
            (0, Rejection::new("missing_field", "device_id is required")),
            (1, Rejection::new("invalid_json", "Invalid JSON")),
        ]);
        assert_eq!(Error::from(two).code(), "invalid_events");
    }

    #[test]
    fn every_stage_maps_to_a_client_or_availability_status() {
        let errors: Vec<Error> = vec![
            RouteError::NotFound.into(),
            RouteError::MethodNotAllowed { allow: "POST".into() }.into(),
            BodyError::Timeout.into(),
            BodyError::Overloaded.into(),
            AuthError::Jwt(crate::auth::jwt::JwtError::Expired).into(),
            AuthError::MissingPermission("events:read").into(),
            ParseError::EmptyBatch.into(),
            LimitError::QuotaExceeded { tier: "free", limit_per_month: 10 }.into(),
            SpoolError::Full.into(),
            ControlError::InvalidRange.into(),
        ];
        for e in errors {
            let p = e.problem();
            let retryable = p.status == StatusCode::SERVICE_UNAVAILABLE || p.status == StatusCode::TOO_MANY_REQUESTS;
            assert!(p.status.is_client_error() || retryable, "{e:?}");
            assert_eq!(retryable, p.retry_after.is_some(), "{e:?}: Retry-After exactly where a retry helps");
            assert_eq!(e.code(), p.code);
        }
    }
}
