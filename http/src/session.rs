//! The session a sign-in yields: TradingView's cookies and who they belong to, kept in a JSON
//! file that only its owner can read.
//!
//! ```no_run
//! use tickwire_http::session::{self, Session};
//!
//! let path = session::default_session_path().expect("HOME is set");
//! let session = Session::load(&path)?;
//! println!("signed in as {:?}", session.user.map(|user| user.username));
//! # Ok::<(), tickwire_http::session::SessionFileError>(())
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::cookie::{Jar, is_cookie_name, is_cookie_value};

/// Largest session file read.
pub const MAX_SESSION_FILE: u64 = 1024 * 1024;

/// The cookies that make a TradingView session. `sessionid` is the session; `sessionid_sign`
/// and `device_t` go with it when TradingView set them.
///
/// ```
/// use tickwire_http::session::Cookies;
///
/// let cookies = Cookies::parse("sessionid=abc; sessionid_sign=v1:xyz; other=1").unwrap();
/// assert_eq!(cookies.header_value().expose(), "sessionid=abc; sessionid_sign=v1:xyz");
/// assert_eq!(format!("{cookies:?}").contains("abc"), false);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cookies {
    /// The session cookie.
    pub sessionid: Secret,
    /// Its signature cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessionid_sign: Option<Secret>,
    /// The device cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_t: Option<Secret>,
}

/// A cookie string that `Cookies::parse` cannot use. The value is never quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCookie {
    /// No `sessionid` in the text.
    #[error("no sessionid cookie: paste the value of the browser's `sessionid` cookie")]
    NoSessionId,
    /// A value with characters a cookie cannot hold (spaces, quotes, `;`, `,`, non-ASCII).
    #[error("the {0} cookie holds characters a cookie value cannot have")]
    BadValue(String),
}

impl Cookies {
    /// Only a session cookie.
    pub fn new(sessionid: impl Into<Secret>) -> Self {
        Self {
            sessionid: sessionid.into(),
            sessionid_sign: None,
            device_t: None,
        }
    }

    /// Cookies as a user pastes them: either a bare `sessionid` value, or a `Cookie` header
    /// (`name=value; name=value`, other cookies ignored).
    pub fn parse(text: &str) -> Result<Self, BadCookie> {
        let text = text.trim();
        let check = |name: &str, value: &str| {
            if value.is_empty() || value.len() > 4096 || !is_cookie_value(value) {
                Err(BadCookie::BadValue(name.to_owned()))
            } else {
                Ok(Secret::from(value))
            }
        };
        if !text.contains('=') {
            if text.is_empty() {
                return Err(BadCookie::NoSessionId);
            }
            return Ok(Self::new(check("sessionid", text)?));
        }
        let mut sessionid = None;
        let mut sessionid_sign = None;
        let mut device_t = None;
        for pair in text.split(';') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            let slot = match name {
                "sessionid" => &mut sessionid,
                "sessionid_sign" => &mut sessionid_sign,
                "device_t" => &mut device_t,
                _ => continue,
            };
            *slot = Some(check(name, value)?);
        }
        Ok(Self {
            sessionid: sessionid.ok_or(BadCookie::NoSessionId)?,
            sessionid_sign,
            device_t,
        })
    }

    /// The `Cookie` header: `sessionid=..; sessionid_sign=..; device_t=..`.
    pub fn header_value(&self) -> Secret {
        self.jar().header().unwrap_or_default()
    }

    /// The cookies as a jar for one request chain.
    pub(crate) fn jar(&self) -> Jar {
        let mut jar = Jar::default();
        for (name, value) in self.pairs() {
            if is_cookie_name(name) {
                jar.set(name, Some(value.clone()));
            }
        }
        jar
    }

    fn pairs(&self) -> impl Iterator<Item = (&'static str, &Secret)> {
        [
            ("sessionid", Some(&self.sessionid)),
            ("sessionid_sign", self.sessionid_sign.as_ref()),
            ("device_t", self.device_t.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
    }

    /// The cookies of a finished chain: what it started with, updated by what the responses set.
    /// `None` without a `sessionid`.
    pub(crate) fn from_chain(
        start: Option<&Cookies>,
        received: &crate::cookie::Received,
    ) -> Option<Self> {
        let pick = |name: &str, old: Option<&Secret>| match received.get(name) {
            Some(new) => new.cloned(),
            None => old.cloned(),
        };
        Some(Self {
            sessionid: pick("sessionid", start.map(|c| &c.sessionid)).filter(|v| !v.is_empty())?,
            sessionid_sign: pick(
                "sessionid_sign",
                start.and_then(|c| c.sessionid_sign.as_ref()),
            ),
            device_t: pick("device_t", start.and_then(|c| c.device_t.as_ref())),
        })
    }
}

/// Who a session belongs to, as TradingView's user object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The numeric user id.
    pub id: u64,
    /// The user name.
    pub username: String,
    /// The plan (`pro_plan`, e.g. `pro_premium`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Whether the account is paid, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_pro: Option<bool>,
}

impl UserInfo {
    /// Reads a TradingView user object: `id` (a number, or digits in a string) and a non-empty
    /// `username` are required; wrong types elsewhere are ignored.
    pub(crate) fn from_json(user: &serde_json::Value) -> Option<Self> {
        let id = match user.get("id")? {
            serde_json::Value::Number(number) => number.as_u64()?,
            serde_json::Value::String(text) if text.bytes().all(|b| b.is_ascii_digit()) => {
                text.parse().ok()?
            }
            _ => return None,
        };
        let username = crate::text::clean(user.get("username")?.as_str()?, 100);
        if username.is_empty() {
            return None;
        }
        let plan = user
            .get("pro_plan")
            .and_then(serde_json::Value::as_str)
            .map(|plan| crate::text::clean(plan, 100))
            .filter(|plan| !plan.is_empty());
        let is_pro = user.get("is_pro").and_then(serde_json::Value::as_bool);
        Some(Self {
            id,
            username,
            plan,
            is_pro,
        })
    }
}

/// A signed-in session: the cookies, who they belong to, when it was made. Saved as JSON.
///
/// ```
/// use tickwire_http::session::{Cookies, Session};
///
/// let session = Session::new(Cookies::new("abc"), None);
/// let json = serde_json::to_string(&session).unwrap();
/// assert!(json.contains("\"sessionid\":\"abc\""));
/// assert!(!format!("{session:?}").contains("abc"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session cookies.
    pub cookies: Cookies,
    /// Who signed in, when known.
    #[serde(default)]
    pub user: Option<UserInfo>,
    /// When the session was made (Unix seconds).
    #[serde(default)]
    pub created_unix: u64,
}

/// A session file that cannot be used. Never quotes the file's contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionFileError {
    /// No file there.
    #[error("no session file at {}: run `tickwire login`", .path.display())]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The file's mode lets the group or others in.
    #[error("{} is readable by others; run chmod 600 {}", .path.display(), .path.display())]
    ReadableByOthers {
        /// The file.
        path: PathBuf,
    },
    /// Larger than [`MAX_SESSION_FILE`].
    #[error("{} is larger than 1 MiB: not a tickwire session file", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not a session file (bad JSON, missing fields, an empty sessionid).
    #[error("{} is not a valid session file ({detail}): run `tickwire login` again", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where it went wrong (a line and column, never the contents).
        detail: String,
    },
    /// Reading or writing failed.
    #[error("{}: {message}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        message: String,
    },
}

fn io_error(path: &Path, error: &std::io::Error) -> SessionFileError {
    SessionFileError::Io {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// The current time in Unix seconds (0 when the clock is before 1970).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl Session {
    /// A session made now.
    pub fn new(cookies: Cookies, user: Option<UserInfo>) -> Self {
        Self {
            cookies,
            user,
            created_unix: now_unix(),
        }
    }

    /// Writes the session to `path` atomically: the parent directory is created (mode 0700),
    /// the JSON goes to a temporary file created with mode 0600 in the same directory, is synced,
    /// then renamed over `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), SessionFileError> {
        let path = path.as_ref();
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let Some(name) = path.file_name() else {
            return Err(SessionFileError::Io {
                path: path.to_owned(),
                message: "not a file path".to_owned(),
            });
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&parent)
            .map_err(|error| io_error(&parent, &error))?;

        let json = serde_json::to_vec_pretty(self).map_err(|error| SessionFileError::Io {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
        let temporary = parent.join(format!(
            ".{}.{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            unique()
        ));
        let result = write_new(&temporary, &json).and_then(|()| {
            std::fs::rename(&temporary, path).map_err(|error| io_error(path, &error))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        result?;
        // Make the rename itself durable; a directory that cannot be synced is not an error.
        if let Ok(directory) = std::fs::File::open(&parent) {
            let _ = directory.sync_all();
        }
        Ok(())
    }

    /// Reads a session file, refusing one that the group or others can read, one larger than
    /// 1 MiB, and one that is not a session.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SessionFileError> {
        let path = path.as_ref();
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(SessionFileError::Missing {
                    path: path.to_owned(),
                });
            }
            Err(error) => return Err(io_error(path, &error)),
        };
        // The checks look at the opened file itself, not at the path again.
        let metadata = file.metadata().map_err(|error| io_error(path, &error))?;
        if !metadata.is_file() {
            return Err(SessionFileError::Io {
                path: path.to_owned(),
                message: "not a regular file".to_owned(),
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if metadata.permissions().mode() & 0o077 != 0 {
                return Err(SessionFileError::ReadableByOthers {
                    path: path.to_owned(),
                });
            }
        }
        if metadata.len() > MAX_SESSION_FILE {
            return Err(SessionFileError::TooLarge {
                path: path.to_owned(),
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_SESSION_FILE.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|error| io_error(path, &error))?;
        if u64::try_from(bytes.len()).map_or(true, |length| length > MAX_SESSION_FILE) {
            return Err(SessionFileError::TooLarge {
                path: path.to_owned(),
            });
        }
        let session: Session =
            serde_json::from_slice(&bytes).map_err(|error| SessionFileError::Invalid {
                path: path.to_owned(),
                // serde's message can quote a value from the file; the position cannot.
                detail: format!("line {} column {}", error.line(), error.column()),
            })?;
        if session.cookies.sessionid.is_empty()
            || !is_cookie_value(session.cookies.sessionid.expose())
        {
            return Err(SessionFileError::Invalid {
                path: path.to_owned(),
                detail: "the sessionid is empty or not a cookie value".to_owned(),
            });
        }
        Ok(session)
    }
}

/// A number no other call in this process gets, for temporary file names.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::from(since.subsec_nanos()));
    NEXT.fetch_add(1, Ordering::Relaxed) ^ (nanos << 20)
}

/// Creates `path` (which must not exist) with mode 0600, writes `bytes`, syncs.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), SessionFileError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|error| io_error(path, &error))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| io_error(path, &error))
}

/// Deletes the session file; `Ok(false)` when there was none.
pub fn remove(path: impl AsRef<Path>) -> Result<bool, SessionFileError> {
    let path = path.as_ref();
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error(path, &error)),
    }
}

/// `$XDG_CONFIG_HOME/tickwire/session.json`, else `$HOME/.config/tickwire/session.json`;
/// `None` when neither is set (relative values are ignored, as the XDG spec says).
pub fn default_session_path() -> Option<PathBuf> {
    session_path_from(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

fn session_path_from(
    xdg_config_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let absolute = |value: Option<std::ffi::OsString>| {
        value.map(PathBuf::from).filter(|path| path.is_absolute())
    };
    let config =
        absolute(xdg_config_home).or_else(|| absolute(home).map(|home| home.join(".config")))?;
    Some(config.join("tickwire").join("session.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "tickwire-http-{tag}-{}-{}",
                std::process::id(),
                unique()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> Session {
        Session {
            cookies: Cookies {
                sessionid: "sid-value-123".into(),
                sessionid_sign: Some("v3:sign-value".into()),
                device_t: None,
            },
            user: Some(UserInfo {
                id: 42,
                username: "alice".into(),
                plan: Some("pro_premium".into()),
                is_pro: Some(true),
            }),
            created_unix: 1_700_000_000,
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn saves_with_owner_only_modes_and_loads_back() {
        let dir = TempDir::new("save");
        let path = dir.0.join("nested").join("tickwire").join("session.json");
        sample().save(&path).unwrap();
        #[cfg(unix)]
        {
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        assert_eq!(Session::load(&path).unwrap(), sample());
        // Saving again replaces the file and leaves no temporary behind.
        let mut other = sample();
        other.user = None;
        other.save(&path).unwrap();
        assert_eq!(Session::load(&path).unwrap(), other);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("session.json")]);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("session.json");
        std::fs::write(&path, serde_json::to_vec(&sample()).unwrap()).unwrap();
        set_mode(&path, 0o644);
        let error = Session::load(&path).unwrap_err();
        assert!(
            matches!(error, SessionFileError::ReadableByOthers { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("is readable by others; run chmod 600"),
            "{text}"
        );
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!text.contains("sid-value-123"));
        set_mode(&path, 0o640);
        assert!(matches!(
            Session::load(&path),
            Err(SessionFileError::ReadableByOthers { .. })
        ));
        set_mode(&path, 0o600);
        assert!(Session::load(&path).is_ok());
    }

    #[test]
    fn missing_invalid_and_huge_files() {
        let dir = TempDir::new("bad");
        let path = dir.0.join("session.json");
        assert!(matches!(
            Session::load(&path),
            Err(SessionFileError::Missing { .. })
        ));

        let write = |bytes: &[u8]| {
            write_new_replacing(&path, bytes);
        };
        write(br#"{"cookies":{"sessionid":"secret-in-file"},"user":"#);
        let error = Session::load(&path).unwrap_err();
        assert!(
            matches!(error, SessionFileError::Invalid { .. }),
            "{error:?}"
        );
        assert!(!error.to_string().contains("secret-in-file"));
        assert!(!format!("{error:?}").contains("secret-in-file"));

        // A wrong type: serde would quote the value, the error does not.
        write(br#"{"cookies":{"sessionid":12345678987654321}}"#);
        let error = Session::load(&path).unwrap_err();
        assert!(matches!(error, SessionFileError::Invalid { .. }));
        assert!(!error.to_string().contains("12345678987654321"), "{error}");

        write(br#"{"cookies":{"sessionid":""}}"#);
        assert!(matches!(
            Session::load(&path),
            Err(SessionFileError::Invalid { .. })
        ));

        write(b"\xff\xfe not utf8");
        assert!(matches!(
            Session::load(&path),
            Err(SessionFileError::Invalid { .. })
        ));

        let huge = vec![b' '; usize::try_from(MAX_SESSION_FILE).unwrap() + 1];
        write(&huge);
        assert!(matches!(
            Session::load(&path),
            Err(SessionFileError::TooLarge { .. })
        ));

        // Minimal file: created_unix and user default.
        write(br#"{"cookies":{"sessionid":"abc"}}"#);
        let session = Session::load(&path).unwrap();
        assert_eq!(session.cookies, Cookies::new("abc"));
        assert_eq!(session.user, None);
    }

    fn write_new_replacing(path: &Path, bytes: &[u8]) {
        let _ = std::fs::remove_file(path);
        write_new(path, bytes).unwrap();
    }

    #[test]
    fn remove_is_idempotent() {
        let dir = TempDir::new("remove");
        let path = dir.0.join("session.json");
        sample().save(&path).unwrap();
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn default_path_prefers_xdg_then_home() {
        let os = |text: &str| Some(std::ffi::OsString::from(text));
        assert_eq!(
            session_path_from(os("/x/config"), os("/home/a")),
            Some(PathBuf::from("/x/config/tickwire/session.json"))
        );
        assert_eq!(
            session_path_from(None, os("/home/a")),
            Some(PathBuf::from("/home/a/.config/tickwire/session.json"))
        );
        assert_eq!(
            session_path_from(os("relative"), os("/home/a")),
            Some(PathBuf::from("/home/a/.config/tickwire/session.json"))
        );
        assert_eq!(session_path_from(os(""), None), None);
        assert_eq!(session_path_from(None, None), None);
    }

    #[test]
    fn cookies_parse_from_what_users_paste() {
        assert_eq!(Cookies::parse("  abc123 "), Ok(Cookies::new("abc123")));
        let cookies = Cookies::parse("a=1; sessionid=s; device_t=d; sessionid_sign=v1:x").unwrap();
        assert_eq!(cookies.sessionid.expose(), "s");
        assert_eq!(
            cookies.sessionid_sign.as_ref().map(Secret::expose),
            Some("v1:x")
        );
        assert_eq!(
            cookies.header_value().expose(),
            "sessionid=s; sessionid_sign=v1:x; device_t=d"
        );
        assert_eq!(Cookies::parse(""), Err(BadCookie::NoSessionId));
        assert_eq!(Cookies::parse("a=1; b=2"), Err(BadCookie::NoSessionId));
        assert_eq!(
            Cookies::parse("has space"),
            Err(BadCookie::BadValue("sessionid".into()))
        );
        let error = Cookies::parse("sessionid=sécret").unwrap_err();
        assert!(!error.to_string().contains("sécret"));
    }

    #[test]
    fn user_objects_are_read_leniently_but_need_id_and_username() {
        let user = |text: &str| UserInfo::from_json(&serde_json::from_str(text).unwrap());
        assert_eq!(
            user(r#"{"id":7,"username":"bob","pro_plan":"pro","is_pro":true,"x":[1]}"#),
            Some(UserInfo {
                id: 7,
                username: "bob".into(),
                plan: Some("pro".into()),
                is_pro: Some(true)
            })
        );
        assert_eq!(
            user(r#"{"id":"7","username":"bob"}"#).map(|u| u.id),
            Some(7)
        );
        let lenient = user(r#"{"id":7,"username":"bob","pro_plan":3,"is_pro":"yes"}"#).unwrap();
        assert_eq!((lenient.plan, lenient.is_pro), (None, None));
        assert_eq!(user(r#"{"id":-1,"username":"bob"}"#), None);
        assert_eq!(user(r#"{"id":1.5,"username":"bob"}"#), None);
        assert_eq!(user(r#"{"id":1e300,"username":"bob"}"#), None);
        assert_eq!(
            user(r#"{"id":99999999999999999999999,"username":"bob"}"#),
            None
        );
        assert_eq!(user(r#"{"id":"7x","username":"bob"}"#), None);
        assert_eq!(user(r#"{"id":7,"username":""}"#), None);
        assert_eq!(user(r#"{"id":7}"#), None);
        assert_eq!(user(r#"{"username":"bob"}"#), None);
        assert_eq!(user(r#"[1,2]"#), None);
    }
}
