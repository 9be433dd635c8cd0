//! Roles and what they may do: the one table the login, the user routes and the
//! docs read. Tokens carry the permissions of their user's role when issued.

/// Each role with its permissions; `*` is every permission.
pub const ROLES: &[(&str, &[&str])] = &[
    ("super_admin", &["*"]),
    (
        "admin",
        &[
            "org:read",
            "org:write",
            "users:read",
            "users:write",
            "apps:read",
            "apps:write",
            "keys:write",
            "branding:read",
            "branding:write",
            "audit:read",
            "quotas:read",
            "events:read",
            "events:write",
        ],
    ),
    ("analyst", &["org:read", "apps:read", "branding:read", "quotas:read", "events:read"]),
    ("viewer", &["org:read", "apps:read", "quotas:read"]),
];

/// The permissions of `role`, if it is one.
pub fn permissions(role: &str) -> Option<&'static [&'static str]> {
    ROLES.iter().find(|(name, _)| *name == role).map(|(_, permissions)| *permissions)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_role_is_known_and_only_super_admin_holds_everything() {
        assert_eq!(super::permissions("super_admin"), Some(&["*"][..]));
        assert!(super::permissions("admin").unwrap().contains(&"keys:write"));
        assert!(!super::permissions("viewer").unwrap().contains(&"events:read"));
        assert_eq!(super::permissions("owner"), None);
    }
}
