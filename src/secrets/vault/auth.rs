//! [`VaultAuth`]: how the server authenticates to Vault, and the credential
//! files it reads.

use std::fmt;
use std::path::{Path, PathBuf};

use vaultrs::client::VaultClient;
use zeroize::Zeroizing;

use super::classify_login;
use crate::secrets::{SecretError, SecretsConfigError};

/// Where Kubernetes mounts a pod's service-account token.
pub const KUBERNETES_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// How the server authenticates to Vault.
///
/// | method | static secret | logs in again when the token dies |
/// |---|---|---|
/// | [`token`](Self::token) / `VAULT_TOKEN` | the token | no (fails closed with `AuthFailed`) |
/// | [`token_file`](Self::token_file) | the token, in a file | re-reads the file (e.g. a Vault Agent sink) |
/// | [`approle`](Self::approle) | `secret_id`, in a file | yes |
/// | [`kubernetes`](Self::kubernetes) / [`jwt`](Self::jwt) | none: the workload's own JWT | yes |
///
/// **File permissions.** A token file or `secret_id` file must not be
/// accessible by group or others: `chmod 0400` (or `0600`) it, as ssh does
/// for private keys. A wider mode is refused with
/// [`SecretsConfigError::InsecureFile`] at start and at every re-login. Files
/// are read again at every login, so they can be rotated in place.
/// Workload JWT files are not checked: the kubelet writes projected tokens
/// `0644` by default, and they are short-lived and audience-bound.
#[derive(Clone)]
pub struct VaultAuth {
    pub(super) method: Method,
    mount: Option<String>,
}

#[derive(Clone)]
pub(super) enum Method {
    Token(Zeroizing<String>),
    TokenFile(PathBuf),
    AppRole {
        role_id: Zeroizing<String>,
        secret_id_file: PathBuf,
    },
    Kubernetes {
        role: String,
        jwt_file: PathBuf,
    },
    Jwt {
        role: String,
        jwt_file: PathBuf,
    },
}

/// A token and what Vault said about it at login.
pub(super) struct Login {
    pub(super) token: Zeroizing<String>,
}

impl VaultAuth {
    /// A static token. It is renewed while renewable; when it dies the store
    /// fails closed ([`SecretError::AuthFailed`]).
    pub fn token(token: impl Into<String>) -> Self {
        Self::new(Method::Token(Zeroizing::new(token.into())))
    }

    /// The token in `VAULT_TOKEN`.
    pub fn token_from_env() -> Result<Self, SecretsConfigError> {
        let token =
            Zeroizing::new(std::env::var("VAULT_TOKEN").map_err(|_| SecretsConfigError::MissingEnv("VAULT_TOKEN"))?);
        if token.trim().is_empty() {
            return Err(SecretsConfigError::Empty("VAULT_TOKEN".into()));
        }
        Ok(Self::new(Method::Token(token)))
    }

    /// A token read from `path` (mode `0400`), read again when Vault rejects
    /// the current one.
    pub fn token_file(path: impl Into<PathBuf>) -> Self {
        Self::new(Method::TokenFile(path.into()))
    }

    /// AppRole: `role_id`, and the `secret_id` read from `secret_id_file`
    /// (mode `0400`) at every login.
    pub fn approle(role_id: impl Into<String>, secret_id_file: impl Into<PathBuf>) -> Self {
        Self::new(Method::AppRole {
            role_id: Zeroizing::new(role_id.into()),
            secret_id_file: secret_id_file.into(),
        })
    }

    /// Kubernetes auth with the pod's service-account token
    /// ([`KUBERNETES_JWT_FILE`]) as `role`.
    pub fn kubernetes(role: impl Into<String>) -> Self {
        Self::new(Method::Kubernetes {
            role: role.into(),
            jwt_file: PathBuf::from(KUBERNETES_JWT_FILE),
        })
    }

    /// JWT auth (workload identity): log in as `role` with the JWT in
    /// `jwt_file`, read again at every login.
    pub fn jwt(role: impl Into<String>, jwt_file: impl Into<PathBuf>) -> Self {
        Self::new(Method::Jwt {
            role: role.into(),
            jwt_file: jwt_file.into(),
        })
    }

    /// Read the JWT from `path` instead (Kubernetes and JWT methods; ignored
    /// by the others). For Kubernetes the default is [`KUBERNETES_JWT_FILE`].
    ///
    /// Defaults to `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    pub fn jwt_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Method::Kubernetes { jwt_file, .. } | Method::Jwt { jwt_file, .. } = &mut self.method {
            *jwt_file = path.into();
        }
        self
    }

    /// The path the auth method is mounted at (unused for tokens).
    ///
    /// Defaults to `approle`, `kubernetes` or `jwt`, after the method.
    pub fn mount(mut self, mount: impl Into<String>) -> Self {
        self.mount = Some(mount.into());
        self
    }

    /// The method named by the environment, first match wins:
    ///
    /// 1. `VAULT_ROLE_ID` + `VAULT_SECRET_ID_FILE`: AppRole
    ///    (mount `VAULT_APPROLE_MOUNT`, default `approle`);
    /// 2. `VAULT_K8S_ROLE`: Kubernetes (JWT file `VAULT_K8S_JWT_FILE`,
    ///    default [`KUBERNETES_JWT_FILE`]; mount `VAULT_K8S_MOUNT`);
    /// 3. `VAULT_JWT_ROLE` + `VAULT_JWT_FILE`: JWT (mount `VAULT_JWT_MOUNT`);
    /// 4. `VAULT_TOKEN_FILE`: a token file;
    /// 5. `VAULT_TOKEN`: a token.
    pub fn from_env() -> Result<Self, SecretsConfigError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let with_mount = |auth: VaultAuth, k: &str| match var(k) {
            Some(m) => auth.mount(m),
            None => auth,
        };
        if let Some(role_id) = var("VAULT_ROLE_ID") {
            let file = var("VAULT_SECRET_ID_FILE").ok_or(SecretsConfigError::MissingEnv("VAULT_SECRET_ID_FILE"))?;
            return Ok(with_mount(Self::approle(role_id, file), "VAULT_APPROLE_MOUNT"));
        }
        if let Some(role) = var("VAULT_K8S_ROLE") {
            let mut auth = Self::kubernetes(role);
            if let Some(f) = var("VAULT_K8S_JWT_FILE") {
                auth = auth.jwt_file(f);
            }
            return Ok(with_mount(auth, "VAULT_K8S_MOUNT"));
        }
        if let Some(role) = var("VAULT_JWT_ROLE") {
            let file = var("VAULT_JWT_FILE").ok_or(SecretsConfigError::MissingEnv("VAULT_JWT_FILE"))?;
            return Ok(with_mount(Self::jwt(role, file), "VAULT_JWT_MOUNT"));
        }
        if let Some(file) = var("VAULT_TOKEN_FILE") {
            return Ok(Self::token_file(file));
        }
        Self::token_from_env()
    }

    fn new(method: Method) -> Self {
        VaultAuth { method, mount: None }
    }

    /// Short name for logs and `Debug`.
    pub(super) fn kind(&self) -> &'static str {
        match self.method {
            Method::Token(_) => "token",
            Method::TokenFile(_) => "token_file",
            Method::AppRole { .. } => "approle",
            Method::Kubernetes { .. } => "kubernetes",
            Method::Jwt { .. } => "jwt",
        }
    }

    /// Whether a dead token can be replaced by logging in (or re-reading).
    pub(super) fn can_login(&self) -> bool {
        !matches!(self.method, Method::Token(_))
    }

    /// Whether obtaining a token is a request to Vault (not a static token
    /// or a token file).
    pub(super) fn asks_vault(&self) -> bool {
        !matches!(self.method, Method::Token(_) | Method::TokenFile(_))
    }

    /// Check the credential files now (at build time), so a bad mode is a
    /// configuration error rather than a failed login later.
    pub(super) fn check_files(&self) -> Result<(), SecretsConfigError> {
        match &self.method {
            Method::TokenFile(p) | Method::AppRole { secret_id_file: p, .. } => read_credential_file(p, true).map(drop),
            Method::Kubernetes { jwt_file, .. } | Method::Jwt { jwt_file, .. } => {
                read_credential_file(jwt_file, false).map(drop)
            }
            Method::Token(_) => Ok(()),
        }
    }

    /// Obtain a token: the static one, the file's, or a login. `anon` is a
    /// client without a token.
    pub(super) async fn login(&self, anon: &VaultClient) -> Result<Login, SecretError> {
        let file = |p: &Path, strict| {
            read_credential_file(p, strict).map_err(|e| {
                tracing::warn!(error = %e, "vault login: cannot read the credential file");
                SecretError::AuthFailed
            })
        };
        let token = match &self.method {
            Method::Token(t) => return Ok(Login { token: t.clone() }),
            Method::TokenFile(p) => return Ok(Login { token: file(p, true)? }),
            Method::AppRole {
                role_id,
                secret_id_file,
            } => {
                let secret_id = file(secret_id_file, true)?;
                let mount = self.mount.as_deref().unwrap_or("approle");
                vaultrs::auth::approle::login(anon, mount, role_id, &secret_id).await
            }
            Method::Kubernetes { role, jwt_file } => {
                let jwt = file(jwt_file, false)?;
                let mount = self.mount.as_deref().unwrap_or("kubernetes");
                vaultrs::auth::kubernetes::login(anon, mount, role, &jwt).await
            }
            Method::Jwt { role, jwt_file } => {
                let jwt = file(jwt_file, false)?;
                let mount = self.mount.as_deref().unwrap_or("jwt");
                vaultrs::auth::oidc::login(anon, mount, &jwt, Some(role.clone())).await
            }
        }
        .map_err(|e| classify_login(&e))?;
        Ok(Login {
            token: Zeroizing::new(token.client_token),
        })
    }
}

impl fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("VaultAuth");
        d.field("method", &self.kind());
        match &self.method {
            Method::Token(_) => d.field("token", &"[REDACTED]"),
            Method::TokenFile(p) => d.field("token_file", p),
            Method::AppRole { secret_id_file, .. } => d
                .field("role_id", &"[REDACTED]")
                .field("secret_id_file", secret_id_file),
            Method::Kubernetes { role, jwt_file } | Method::Jwt { role, jwt_file } => {
                d.field("role", role).field("jwt_file", jwt_file)
            }
        };
        d.field("mount", &self.mount).finish()
    }
}

/// Read a one-line credential file, refusing (when `strict`) a file that
/// group or others may access.
pub(crate) fn read_credential_file(path: &Path, strict: bool) -> Result<Zeroizing<String>, SecretsConfigError> {
    let read_err = |source| SecretsConfigError::ReadFile {
        path: path.to_owned(),
        source,
    };
    if strict {
        check_mode(path)?;
    }
    let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
    let value = Zeroizing::new(raw.trim().to_owned());
    if value.is_empty() {
        return Err(SecretsConfigError::Empty(path.display().to_string()));
    }
    Ok(value)
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), SecretsConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretsConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretsConfigError::InsecureFile {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path) -> Result<(), SecretsConfigError> {
    // No POSIX modes: rely on the platform's ACLs (documented).
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with_mode(name: &str, mode: u32, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rmcp-guard-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn group_or_world_readable_files_are_refused() {
        for mode in [0o640, 0o604, 0o644, 0o660] {
            let p = file_with_mode(&format!("f{mode:o}"), mode, "s3cr3t\n");
            let err = read_credential_file(&p, true).unwrap_err();
            assert!(
                matches!(err, SecretsConfigError::InsecureFile { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 0400"));
            assert!(!err.to_string().contains("s3cr3t"));
        }
        let p = file_with_mode("ok", 0o400, "s3cr3t\n");
        assert_eq!(read_credential_file(&p, true).unwrap().as_str(), "s3cr3t");
        let p = file_with_mode("jwt", 0o644, "eyJ\n");
        assert!(read_credential_file(&p, false).is_ok());
        let p = file_with_mode("empty", 0o600, " \n");
        assert!(matches!(
            read_credential_file(&p, true),
            Err(SecretsConfigError::Empty(_))
        ));
    }

    #[test]
    fn debug_hides_token_and_role_id() {
        let s = format!(
            "{:?} {:?}",
            VaultAuth::token("hvs.SECRET"),
            VaultAuth::approle("ROLEID", "/run/sid")
        );
        assert!(!s.contains("hvs.SECRET") && !s.contains("ROLEID"), "{s}");
    }

    #[test]
    fn kubernetes_defaults_to_the_service_account_token() {
        let a = VaultAuth::kubernetes("mcp");
        assert!(matches!(&a.method, Method::Kubernetes { jwt_file, .. } if jwt_file == Path::new(KUBERNETES_JWT_FILE)));
        assert_eq!(a.mount, None);
    }
}
