//! Pub/Sub clients and resource names.
//!
//! Google's Rust client ignores `PUBSUB_EMULATOR_HOST`; we honour it as
//! Google's other client libraries do: when set, every client connects to
//! `http://$PUBSUB_EMULATOR_HOST` with anonymous credentials. Otherwise the
//! clients use Application Default Credentials; a credentials file named by
//! `GOOGLE_APPLICATION_CREDENTIALS` that cannot be read stops the client
//! from building, with one line naming the file and the variable.

use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};

/// Where Pub/Sub is.
#[derive(Clone, Debug)]
pub struct PubsubConfig {
    /// The Google Cloud project.
    pub project: String,
    /// `host:port` of an emulator, if any.
    pub emulator_host: Option<String>,
}

/// A Pub/Sub call failed.
pub type Error = google_cloud_pubsub::Error;
/// A client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The credentials file named by `GOOGLE_APPLICATION_CREDENTIALS` cannot
    /// be read.
    #[error("cannot read the Google credentials file \"{}\" named by GOOGLE_APPLICATION_CREDENTIALS", .0.display())]
    Credentials(std::path::PathBuf, #[source] std::io::Error),
    /// Google's client builder failed.
    #[error(transparent)]
    Client(#[from] google_cloud_gax::client_builder::Error),
}

/// The variable naming a service-account (or other) credentials file.
const CREDENTIALS_VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// Checks that the file `GOOGLE_APPLICATION_CREDENTIALS` names (when set and
/// not empty) can be read. Google's client would otherwise fail later, or
/// with a message that names neither.
fn check_credentials_file(var: Option<std::ffi::OsString>) -> Result<(), BuildError> {
    let Some(path) = var.filter(|v| !v.is_empty()).map(std::path::PathBuf::from) else {
        return Ok(());
    };
    std::fs::read(&path)
        .map(drop)
        .map_err(|e| BuildError::Credentials(path, e))
}

impl PubsubConfig {
    /// Without an emulator, checks the credentials file (see
    /// [`BuildError::Credentials`]).
    fn check_credentials(&self) -> Result<(), BuildError> {
        if self.emulator_host.is_some() {
            return Ok(());
        }
        check_credentials_file(std::env::var_os(CREDENTIALS_VAR))
    }

    fn endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|h| {
            if h.starts_with("http://") || h.starts_with("https://") {
                h.clone()
            } else {
                format!("http://{h}")
            }
        })
    }

    /// The full name of a subscription given as a short name or in full.
    pub fn subscription_path(&self, name: &str) -> String {
        full_name(&self.project, "subscriptions", name)
    }

    /// The full name of a topic given as a short name or in full.
    pub fn topic_path(&self, name: &str) -> String {
        full_name(&self.project, "topics", name)
    }

    /// A subscriber client whose streams spread over `channels` gRPC channels.
    pub async fn subscriber(&self, channels: usize) -> Result<Subscriber, BuildError> {
        self.check_credentials()?;
        let mut b = Subscriber::builder().with_grpc_subchannel_count(channels.max(1));
        if let Some(ep) = self.endpoint() {
            b = b
                .with_endpoint(ep)
                .with_credentials(Anonymous::new().build());
        }
        Ok(b.build().await?)
    }

    /// A publisher for `topic` (full name) that sends batches of up to
    /// `batch_messages` messages.
    pub async fn publisher(
        &self,
        topic: &str,
        batch_messages: u32,
    ) -> Result<Publisher, BuildError> {
        self.check_credentials()?;
        let mut b = Publisher::builder(topic.to_string())
            .set_message_count_threshold(batch_messages)
            .set_delay_threshold(std::time::Duration::from_millis(10));
        if let Some(ep) = self.endpoint() {
            b = b
                .with_endpoint(ep)
                .with_credentials(Anonymous::new().build());
        }
        Ok(b.build().await?)
    }

    /// An admin client for subscriptions (used to probe one's existence).
    pub async fn subscription_admin(&self) -> Result<SubscriptionAdmin, BuildError> {
        self.check_credentials()?;
        let mut b = SubscriptionAdmin::builder();
        if let Some(ep) = self.endpoint() {
            b = b
                .with_endpoint(ep)
                .with_credentials(Anonymous::new().build());
        }
        Ok(b.build().await?)
    }

    /// Creates `topic` and `subscription` (short or full names) unless they
    /// exist. Returns whether each was created.
    pub async fn ensure(
        &self,
        topic: &str,
        subscription: &str,
        ack_deadline_secs: i32,
    ) -> Result<(bool, bool), SetupError> {
        let topic = self.topic_path(topic);
        let subscription = self.subscription_path(subscription);
        self.check_credentials().map_err(SetupError::Client)?;
        let (mut tb, mut sb) = (TopicAdmin::builder(), SubscriptionAdmin::builder());
        if let Some(ep) = self.endpoint() {
            tb = tb
                .with_endpoint(ep.clone())
                .with_credentials(Anonymous::new().build());
            sb = sb
                .with_endpoint(ep)
                .with_credentials(Anonymous::new().build());
        }
        let topics = tb.build().await.map_err(|e| SetupError::Client(e.into()))?;
        let subs = sb.build().await.map_err(|e| SetupError::Client(e.into()))?;
        let created_topic = already_exists_ok(topics.create_topic().set_name(&topic).send().await)
            .map_err(|e| SetupError::Call("create topic", topic.clone(), e))?;
        let created_sub = already_exists_ok(
            subs.create_subscription()
                .set_name(&subscription)
                .set_topic(&topic)
                .set_ack_deadline_seconds(ack_deadline_secs)
                .send()
                .await,
        )
        .map_err(|e| SetupError::Call("create subscription", subscription.clone(), e))?;
        Ok((created_topic, created_sub))
    }
}

/// Why `setup` failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A client could not be built.
    #[error("cannot build a Pub/Sub admin client")]
    Client(#[source] BuildError),
    /// A call failed.
    #[error("cannot {0} {1}")]
    Call(&'static str, String, #[source] Error),
}

fn already_exists_ok<T>(r: Result<T, Error>) -> Result<bool, Error> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.status().is_some_and(|s| s.code == Code::AlreadyExists) => Ok(false),
        Err(e) => Err(e),
    }
}

fn full_name(project: &str, kind: &str, name: &str) -> String {
    if name.starts_with("projects/") {
        name.to_string()
    } else {
        format!("projects/{project}/{kind}/{name}")
    }
}

/// Checks a short or full resource name, returning why it is invalid.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let short = if let Some(rest) = name.strip_prefix("projects/") {
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [p, k, s] if !p.is_empty() && *k == kind && !s.is_empty() => *s,
            _ => {
                return Err(format!(
                    "expected projects/PROJECT/{kind}/NAME or a short name"
                ));
            }
        }
    } else {
        name
    };
    if short.len() < 3 || short.len() > 255 {
        return Err("a name must be 3 to 255 characters".into());
    }
    if short.contains('/') {
        return Err(format!(
            "expected projects/PROJECT/{kind}/NAME or a short name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_credentials_file_is_named_with_its_variable() {
        assert!(check_credentials_file(None).is_ok());
        assert!(check_credentials_file(Some("".into())).is_ok());
        let dir = tempfile::tempdir().unwrap();
        for path in [dir.path().join("missing.json"), dir.path().to_owned()] {
            let err = check_credentials_file(Some(path.clone().into())).unwrap_err();
            let line = crate::error::Chain(&err).to_string();
            assert!(
                line.starts_with(&format!(
                    "cannot read the Google credentials file \"{}\" named by GOOGLE_APPLICATION_CREDENTIALS: ",
                    path.display()
                )),
                "{line}"
            );
        }
        let file = dir.path().join("key.json");
        std::fs::write(&file, "{}").unwrap();
        assert!(check_credentials_file(Some(file.into())).is_ok());
    }

    #[test]
    fn names_expand_and_validate() {
        let c = PubsubConfig {
            project: "p1".into(),
            emulator_host: Some("127.0.0.1:8085".into()),
        };
        assert_eq!(
            c.subscription_path("scan-sub"),
            "projects/p1/subscriptions/scan-sub"
        );
        assert_eq!(
            c.subscription_path("projects/x/subscriptions/s1"),
            "projects/x/subscriptions/s1"
        );
        assert_eq!(c.endpoint().as_deref(), Some("http://127.0.0.1:8085"));
        assert!(validate_name("subscriptions", "scan-sub").is_ok());
        assert!(validate_name("subscriptions", "projects/x/subscriptions/abc").is_ok());
        assert!(validate_name("subscriptions", "projects/x/topics/abc").is_err());
        assert!(validate_name("subscriptions", "ab").is_err());
        assert!(validate_name("topics", "a/b/c").is_err());
    }
}
