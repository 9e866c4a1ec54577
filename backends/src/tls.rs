//! The one TLS crypto provider of our own connections: PostgreSQL and MySQL sources, HTTP
//! sources, the CLI's calls to a coordinator. rustls with `ring` (a short build); the AWS SDK
//! brings its own (aws-lc) when the `aws` feature is on, so a process may link both.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The provider every client config of ours is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes [`provider`] the process default, for clients that build their TLS config from it
/// (mysql_async). With both `ring` and `aws-lc` linked rustls cannot choose one by itself.
/// Idempotent: a default already installed is kept.
pub fn install_process_default() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing the same provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_default_is_installed_once_and_kept() {
        install_process_default();
        let first = CryptoProvider::get_default().expect("installed");
        install_process_default();
        let again = CryptoProvider::get_default().expect("still installed");
        assert!(Arc::ptr_eq(first, again));
        assert!(!provider().cipher_suites.is_empty());
    }
}
