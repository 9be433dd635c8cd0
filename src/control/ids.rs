//! Ids of users, apps and keys: a type prefix and a UUIDv7 in hex (`app_0192…`).
//! Version 7 starts with the time, so ids sort by creation and serve as list cursors.
//! Organisations use the same form (`org_…`) when the control plane creates them; those
//! imported from a tenants file keep their ids.

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_sort_by_creation() {
        let a = super::new_id("app");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_id("app");
        assert!(a < b && a.starts_with("app_") && a.len() == 36, "{a} {b}");
    }
}
