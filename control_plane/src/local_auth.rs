//! The repository's key pair and the tokens neon_local issues with it.
//!
//! `init` writes `auth_private_key.pem` (mode 0600) and
//! `auth_public_key.pem` in the repository. Every daemon verifies tokens
//! with the public key; neon_local signs, whenever it starts something or
//! calls an API, the token that thing needs: admin for its own calls,
//! `pageserver`, `safekeeper` and `proxy` tokens for those daemons, a
//! tenant token in each compute's spec, a `compute` token for compute_ctl's
//! API. Tokens are never stored: replacing the key pair (and restarting)
//! is all a rotation takes.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use auth::{Claims, Scope, SigningKey};
use utils::TenantId;

pub const PRIVATE_KEY_FILE: &str = "auth_private_key.pem";
pub const PUBLIC_KEY_FILE: &str = "auth_public_key.pem";

/// Writes a new key pair into `dir`; the private key readable by its
/// owner only.
pub fn write_key_pair(dir: &Path) -> anyhow::Result<()> {
    let (private, public) = auth::generate_key_pair();
    let private_path = dir.join(PRIVATE_KEY_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private_path)
        .and_then(|mut file| file.write_all(private.as_bytes()))
        .with_context(|| format!("writing {}", private_path.display()))?;
    let public_path = dir.join(PUBLIC_KEY_FILE);
    std::fs::write(&public_path, public)
        .with_context(|| format!("writing {}", public_path.display()))
}

/// Signs the repository's tokens.
pub struct RepoAuth {
    signer: SigningKey,
    public_key: PathBuf,
}

impl std::fmt::Debug for RepoAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoAuth({})", self.public_key.display())
    }
}

impl RepoAuth {
    /// The key pair of the repository at `repo`; a repository made before
    /// neon_local authenticated gets one now.
    pub fn load(repo: &Path) -> anyhow::Result<RepoAuth> {
        let private = repo.join(PRIVATE_KEY_FILE);
        if !private.exists() && repo.join(crate::local_env::CONFIG_FILE).exists() {
            write_key_pair(repo)?;
            eprintln!(
                "generated the repository's key pair ({}, {PUBLIC_KEY_FILE})",
                private.display()
            );
        }
        let signer = SigningKey::from_file(&private)?;
        let public_key = std::path::absolute(repo.join(PUBLIC_KEY_FILE))
            .context("resolving the public key's path")?;
        Ok(RepoAuth { signer, public_key })
    }

    /// The public key file every daemon verifies tokens with.
    pub fn public_key(&self) -> &Path {
        &self.public_key
    }

    pub fn issue(&self, claims: &Claims) -> String {
        self.signer.issue(claims)
    }

    /// A token of `scope` that never expires.
    pub fn scope(&self, scope: Scope) -> String {
        self.issue(&Claims::new(scope))
    }

    /// A token for one tenant that never expires.
    pub fn tenant(&self, tenant_id: TenantId) -> String {
        self.issue(&Claims::tenant(tenant_id))
    }

    pub fn admin(&self) -> String {
        self.scope(Scope::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn keys_are_written_once_and_sign_tokens_their_public_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        write_key_pair(dir.path()).unwrap();
        assert!(write_key_pair(dir.path()).is_err(), "never overwritten");
        let mode = std::fs::metadata(dir.path().join(PRIVATE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let repo_auth = RepoAuth::load(dir.path()).unwrap();
        let verifier = auth::JwtVerifier::from_file(repo_auth.public_key()).unwrap();
        let tenant_id = TenantId::generate();
        assert_eq!(
            verifier.verify(&repo_auth.tenant(tenant_id)).unwrap(),
            Claims::tenant(tenant_id)
        );
        assert_eq!(
            verifier.verify(&repo_auth.admin()).unwrap().scope,
            Scope::Admin
        );
    }
}
