//! Principal names: the database user, role or ACL user a lease owns, `custos_<lease id>`.

use std::fmt;

use crate::error::CredentialError;

/// Every principal Custos creates starts with this; the reconciler only ever touches names
/// with it.
pub const PRINCIPAL_PREFIX: &str = "custos_";

/// The longest lease id a principal can carry: with the prefix, 32 bytes, which fits MySQL
/// 5.7's user name limit (32), MariaDB's (80) and PostgreSQL's identifiers (63).
pub const MAX_LEASE_ID_LEN: usize = 32 - PRINCIPAL_PREFIX.len();

/// The name of a per-lease principal: [`PRINCIPAL_PREFIX`] plus a lease id of lowercase
/// `[a-z0-9]`.
///
/// INVARIANT: the name matches `^custos_[a-z0-9]{1,25}$`, so it needs no quoting in any engine
/// and no task or agent name can reach SQL or ACL text through it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrincipalName(String);

impl PrincipalName {
    /// The principal for a lease.
    ///
    /// # Errors
    /// [`CredentialError::InvalidPrincipal`] when the lease id is empty, longer than
    /// [`MAX_LEASE_ID_LEN`] or has a character outside `[a-z0-9]`.
    pub fn for_lease(lease_id: &str) -> Result<Self, CredentialError> {
        check_lease_chars(lease_id)?;
        if lease_id.is_empty() {
            return Err(invalid(lease_id, "the lease id is empty"));
        }
        Ok(Self(format!("{PRINCIPAL_PREFIX}{lease_id}")))
    }

    /// Reads a full principal name, e.g. one listed by a server.
    ///
    /// # Errors
    /// [`CredentialError::InvalidPrincipal`] when the name lacks the prefix or its lease id is
    /// invalid.
    pub fn parse(name: &str) -> Result<Self, CredentialError> {
        match name.strip_prefix(PRINCIPAL_PREFIX) {
            Some(lease_id) => Self::for_lease(lease_id).map_err(|_| {
                invalid(
                    name,
                    "the part after `custos_` is not a lease id of [a-z0-9]",
                )
            }),
            None => Err(invalid(name, "the name does not start with `custos_`")),
        }
    }

    /// The whole name, e.g. `custos_0a1b2c`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lease id part.
    #[must_use]
    pub fn lease_id(&self) -> &str {
        &self.0[PRINCIPAL_PREFIX.len()..]
    }
}

impl fmt::Display for PrincipalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PrincipalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrincipalName({})", self.0)
    }
}

/// Which principals [`crate::Engine::list_principals`] returns: those whose lease id starts
/// with a given (possibly empty) string of `[a-z0-9]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalPrefix(String);

impl PrincipalPrefix {
    /// Every principal Custos may have created.
    #[must_use]
    pub fn all() -> Self {
        Self(PRINCIPAL_PREFIX.to_owned())
    }

    /// Principals whose lease id starts with `lease_id_prefix`.
    ///
    /// # Errors
    /// [`CredentialError::InvalidPrincipal`] when the prefix is too long or has a character
    /// outside `[a-z0-9]`.
    pub fn lease_ids_starting_with(lease_id_prefix: &str) -> Result<Self, CredentialError> {
        check_lease_chars(lease_id_prefix)?;
        Ok(Self(format!("{PRINCIPAL_PREFIX}{lease_id_prefix}")))
    }

    /// The name prefix, always starting with [`PRINCIPAL_PREFIX`].
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Keeps the names that are valid principals under this prefix, sorted; names under
    /// `custos_` that are not valid principals were not made by Custos and are skipped.
    pub(crate) fn filter<I: IntoIterator<Item = String>>(&self, names: I) -> Vec<PrincipalName> {
        let mut out: Vec<PrincipalName> = names
            .into_iter()
            .filter(|n| n.starts_with(&self.0))
            .filter_map(|n| PrincipalName::parse(&n).ok())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn check_lease_chars(lease_id: &str) -> Result<(), CredentialError> {
    if lease_id.len() > MAX_LEASE_ID_LEN {
        return Err(invalid(
            lease_id,
            "the lease id is longer than 25 characters",
        ));
    }
    if !lease_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(invalid(lease_id, "a lease id is lowercase [a-z0-9] only"));
    }
    Ok(())
}

fn invalid(value: &str, reason: &'static str) -> CredentialError {
    // Bound what an error can echo back.
    let value: String = value.chars().take(64).collect();
    CredentialError::InvalidPrincipal { value, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_alphanumerics_only() {
        let p = PrincipalName::for_lease("0a1b2c").expect("valid");
        assert_eq!(p.as_str(), "custos_0a1b2c");
        assert_eq!(p.lease_id(), "0a1b2c");
        for bad in [
            "",
            "A",
            "a-b",
            "a_b",
            "a b",
            "x'; drop role postgres; --",
            "é",
            "a\0",
            &"a".repeat(26),
        ] {
            assert!(PrincipalName::for_lease(bad).is_err(), "{bad:?}");
        }
        assert!(PrincipalName::for_lease(&"a".repeat(25)).is_ok());
        assert_eq!(
            PrincipalName::for_lease(&"a".repeat(25))
                .map(|p| p.as_str().len())
                .ok(),
            Some(32)
        );
    }

    #[test]
    fn parse_requires_the_prefix() {
        assert!(PrincipalName::parse("custos_abc").is_ok());
        assert!(PrincipalName::parse("custos_").is_err());
        assert!(PrincipalName::parse("postgres").is_err());
        assert!(PrincipalName::parse("custos_ABC").is_err());
    }

    #[test]
    fn prefix_filters_and_skips_foreign_names() {
        let p = PrincipalPrefix::lease_ids_starting_with("ab").expect("valid");
        let names = [
            "custos_abc",
            "custos_abd",
            "custos_ab_x",
            "custos_b",
            "other",
            "custos_abc",
        ]
        .map(String::from);
        let got: Vec<String> = p.filter(names).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["custos_abc", "custos_abd"]);
        assert!(PrincipalPrefix::lease_ids_starting_with("A").is_err());
        assert_eq!(PrincipalPrefix::all().as_str(), "custos_");
    }

    proptest::proptest! {
        #[test]
        fn a_valid_principal_is_always_plain(s in "\\PC{0,40}") {
            if let Ok(p) = PrincipalName::for_lease(&s) {
                let name = p.as_str();
                proptest::prop_assert!(name.len() <= 32);
                proptest::prop_assert!(name.starts_with("custos_"));
                proptest::prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
                proptest::prop_assert_eq!(PrincipalName::parse(name).ok(), Some(p.clone()));
            }
        }
    }
}
