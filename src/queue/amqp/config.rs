//! Settings of the AMQP queue, taken from `[queue]` in `halong.toml`.

use std::time::Duration;

use crate::config::QueueConfig;

/// What the publisher and the consumer need to know.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqp://` or `amqps://` URL, credentials included.
    pub url: String,
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// Unacknowledged deliveries the store consumer holds at once.
    pub prefetch: u16,
    /// How long a publish may wait for its confirm, and a connection attempt for an answer.
    pub publish_timeout: Duration,
    /// Deliveries of one message before the broker dead-letters it.
    pub delivery_limit: u32,
}

impl AmqpSettings {
    /// Settings from `[queue]`; `None` when no `url` is set.
    pub fn from_config(q: &QueueConfig) -> Option<AmqpSettings> {
        Some(AmqpSettings {
            url: q.url.clone()?,
            prefix: q.prefix.clone(),
            prefetch: q.prefetch,
            publish_timeout: Duration::from_secs(q.publish_timeout_secs),
            delivery_limit: q.delivery_limit,
        })
    }

    /// The URL with any password replaced by `***`, for logs and `/ready`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// `amqp://user:secret@host/` → `amqp://user:***@host/`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("amqps://edge-a:p%40ss@mq.example:5671/prov?heartbeat=10"),
            "amqps://edge-a:***@mq.example:5671/prov?heartbeat=10"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(redact("amqp://user@host/"), "amqp://user@host/");
    }
}
