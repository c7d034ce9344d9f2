//! Topics: each worker's table of which of its connections subscribe to what.
//!
//! A worker knows only its own subscribers. A publish is encoded once into [`Bytes`]; the worker
//! where it happens hands a clone (a reference count, no copy; frames up to
//! `queue::COPY_SHARED_MAX` bytes are copied, which costs less) to each of its subscribers, and
//! queues one copy for every other worker, sent in one batch per loop iteration over the
//! workers' channels (a copy per worker, not per subscriber, so that workers never share a
//! reference count's cache line). Each worker delivers a batch in order, so one publisher's
//! messages on a topic reach every subscriber in publish order.
//!
//! Across hosts, a message bus carries publishes (`Settings::bus`, `runtime::cluster`): a
//! worker's first subscriber of a topic adds this node's interest on the bus, its last one
//! leaving removes it.
//!
//! What it does not do: route publishes only to workers with subscribers (every worker gets
//! every publish: with one worker per core that is a handful of channel sends per batch).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ringside_bus::BusHandle;
use ringside_proto::frame::{self, OpCode};
use ringside_proto::Message;
use slab::Slab;

use crate::config::{SlowConsumer, TopicPolicy, TopicRule};

/// A publish on its way to a worker.
#[derive(Debug, Clone)]
pub(crate) struct Publication {
    pub topic: Arc<str>,
    /// The conflation key (0 when the publisher gave none: the topic's latest message).
    pub key: u64,
    /// The encoded frame.
    pub frame: Bytes,
}

impl Publication {
    /// Encodes `msg` once.
    pub fn new(topic: &str, key: u64, msg: Message<'_>) -> Self {
        Publication { topic: topic.into(), key, frame: encode(msg) }
    }

    /// The same publication with its own copy of the frame (for another worker).
    pub fn copied(&self) -> Self {
        Publication {
            topic: Arc::clone(&self.topic),
            key: self.key,
            frame: Bytes::copy_from_slice(&self.frame),
        }
    }
}

/// `msg` as one unmasked server frame.
pub(crate) fn encode(msg: Message<'_>) -> Bytes {
    let opcode = match msg {
        Message::Text(_) => OpCode::Text,
        Message::Binary(_) => OpCode::Binary,
    };
    let mut bytes = Vec::with_capacity(msg.len() + 10);
    frame::write_frame(&mut bytes, true, opcode, None, msg.as_bytes());
    Bytes::from(bytes)
}

/// Why a subscribe was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The topic name is empty or longer than [`MAX_TOPIC_LEN`] bytes.
    BadTopic,
    /// The connection already has the most subscriptions allowed
    /// (`Settings::max_subscriptions`).
    TooMany,
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubscribeError::BadTopic => "topic names are 1 to 1024 bytes",
            SubscribeError::TooMany => "too many subscriptions on this connection",
        })
    }
}

impl std::error::Error for SubscribeError {}

/// The longest topic name.
pub const MAX_TOPIC_LEN: usize = 1024;

/// One topic on one worker.
#[derive(Debug)]
pub(crate) struct Topic {
    name: Arc<str>,
    /// Subscribed connections (worker slab ids), in no particular order.
    pub subscribers: Vec<usize>,
    pub policy: TopicPolicy,
}

/// One worker's topics.
#[derive(Debug)]
pub(crate) struct Topics {
    by_name: HashMap<Arc<str>, u32>,
    topics: Slab<Topic>,
    /// For each connection with subscriptions: (topic, its index in that topic's subscribers).
    of_conn: HashMap<usize, Vec<(u32, u32)>>,
    rules: Vec<TopicRule>,
    default: TopicPolicy,
    max_per_conn: usize,
    /// Told when a topic appears here and when it goes (this node's interest on the bus).
    bus: Option<BusHandle>,
}

impl Topics {
    pub fn new(
        rules: Vec<TopicRule>,
        default: TopicPolicy,
        max_per_conn: usize,
        bus: Option<BusHandle>,
    ) -> Self {
        Topics {
            by_name: HashMap::new(),
            topics: Slab::new(),
            of_conn: HashMap::new(),
            rules,
            default,
            max_per_conn,
            bus,
        }
    }

    /// The policy for a topic: the first rule that matches, else the server's.
    fn policy_for(&self, name: &str) -> TopicPolicy {
        self.rules.iter().find(|r| r.matches(name)).map_or(self.default, |r| r.policy)
    }

    /// Subscribes `conn`; `Ok(false)` if it already was.
    pub fn subscribe(&mut self, conn: usize, name: &str) -> Result<bool, SubscribeError> {
        if name.is_empty() || name.len() > MAX_TOPIC_LEN {
            return Err(SubscribeError::BadTopic);
        }
        let existing = self.by_name.get(name).copied();
        let subs = self.of_conn.get(&conn).map_or(&[][..], Vec::as_slice);
        if existing.is_some_and(|id| subs.iter().any(|&(t, _)| t == id)) {
            return Ok(false);
        }
        // Refused before a topic is made for it: a topic that never had a subscriber must not
        // reach the bus (a removal without its addition would cancel another worker's).
        if subs.len() >= self.max_per_conn {
            return Err(SubscribeError::TooMany);
        }
        let id = match existing {
            Some(id) => id,
            None => {
                let name: Arc<str> = name.into();
                let policy = self.policy_for(&name);
                let id = self.topics.insert(Topic {
                    name: Arc::clone(&name),
                    subscribers: Vec::new(),
                    policy,
                }) as u32;
                self.by_name.insert(Arc::clone(&name), id);
                if let Some(bus) = &self.bus {
                    // Fails only once the bus is shut down, when interest no longer matters.
                    let _ = bus.interest_added(&name);
                }
                id
            }
        };
        let subs = self.of_conn.entry(conn).or_default();
        let topic = &mut self.topics[id as usize];
        subs.push((id, topic.subscribers.len() as u32));
        topic.subscribers.push(conn);
        Ok(true)
    }

    /// Unsubscribes `conn`; returns the topic's id if it was subscribed.
    pub fn unsubscribe(&mut self, conn: usize, name: &str) -> Option<u32> {
        let id = *self.by_name.get(name)?;
        let subs = self.of_conn.get_mut(&conn)?;
        let at = subs.iter().position(|&(t, _)| t == id)?;
        let (_, index) = subs.swap_remove(at);
        if subs.is_empty() {
            self.of_conn.remove(&conn);
        }
        self.remove_subscriber(id, index as usize);
        Some(id)
    }

    /// Removes every subscription of `conn` (it closed).
    pub fn unsubscribe_all(&mut self, conn: usize) {
        let Some(subs) = self.of_conn.remove(&conn) else { return };
        // Its own indices stay right while it leaves: removing it from one topic moves other
        // connections in that topic only.
        for (id, index) in subs {
            self.remove_subscriber(id, index as usize);
        }
    }

    /// Takes the subscriber at `index` out of topic `id` in O(1): the last one moves into its
    /// place, and that one's back-reference is updated.
    fn remove_subscriber(&mut self, id: u32, index: usize) {
        let topic = &mut self.topics[id as usize];
        topic.subscribers.swap_remove(index);
        if let Some(&moved) = topic.subscribers.get(index) {
            if let Some(entry) =
                self.of_conn.get_mut(&moved).and_then(|s| s.iter_mut().find(|(t, _)| *t == id))
            {
                entry.1 = index as u32;
            }
        }
        self.drop_if_unused(id);
    }

    fn drop_if_unused(&mut self, id: u32) {
        if self.topics[id as usize].subscribers.is_empty() {
            let topic = self.topics.remove(id as usize);
            self.by_name.remove(&topic.name);
            if let Some(bus) = &self.bus {
                bus.interest_removed(&topic.name);
            }
        }
    }

    /// The topic called `name`, if this worker has subscribers to it.
    pub fn find(&self, name: &str) -> Option<(u32, &Topic)> {
        let id = *self.by_name.get(name)?;
        Some((id, &self.topics[id as usize]))
    }

    /// Whether `conn` subscribes to `name`.
    pub fn is_subscribed(&self, conn: usize, name: &str) -> bool {
        let Some(&id) = self.by_name.get(name) else { return false };
        self.of_conn.get(&conn).is_some_and(|s| s.iter().any(|&(t, _)| t == id))
    }

    /// How many topics this worker has subscribers for.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.topics.len()
    }
}

impl TopicRule {
    fn matches(&self, name: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.pattern,
        }
    }
}

impl TopicPolicy {
    /// Whether a subscriber with `queued` bytes can take `len` more under this policy's limit.
    pub fn fits(&self, queued: usize, len: usize) -> bool {
        queued + len <= self.limit
    }

    pub fn conflates(&self) -> bool {
        self.slow_consumer == SlowConsumer::Conflate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(max: usize) -> Topics {
        let default = TopicPolicy { slow_consumer: SlowConsumer::Close, limit: 100 };
        let rules = vec![TopicRule {
            pattern: "price.*".into(),
            policy: TopicPolicy { slow_consumer: SlowConsumer::Conflate, limit: 10 },
        }];
        Topics::new(rules, default, max, None)
    }

    fn subscribers(t: &Topics, name: &str) -> Vec<usize> {
        let mut v = t.find(name).map(|(_, t)| t.subscribers.clone()).unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn subscribe_unsubscribe_and_close_keep_every_index_right() {
        let mut t = topics(10);
        for conn in 0..5 {
            assert_eq!(t.subscribe(conn, "a"), Ok(true));
        }
        assert_eq!(t.subscribe(3, "a"), Ok(false), "already subscribed");
        assert_eq!(t.subscribe(3, "b"), Ok(true));
        assert_eq!(t.unsubscribe(1, "a"), Some(0));
        assert_eq!(t.unsubscribe(1, "a"), None);
        t.unsubscribe_all(3);
        assert_eq!(subscribers(&t, "a"), [0, 2, 4]);
        assert!(t.find("b").is_none(), "a topic without subscribers is gone");
        // The moved subscribers' back-references still work.
        for conn in [4, 0, 2] {
            assert!(t.unsubscribe(conn, "a").is_some(), "conn {conn}");
        }
        assert_eq!(t.len(), 0);
        assert!(t.of_conn.is_empty());
    }

    #[test]
    fn limits_and_policies() {
        let mut t = topics(2);
        assert_eq!(t.subscribe(0, ""), Err(SubscribeError::BadTopic));
        assert_eq!(t.subscribe(0, &"x".repeat(MAX_TOPIC_LEN + 1)), Err(SubscribeError::BadTopic));
        assert_eq!(t.subscribe(0, "a"), Ok(true));
        assert_eq!(t.subscribe(0, "price.eur"), Ok(true));
        assert_eq!(t.subscribe(0, "c"), Err(SubscribeError::TooMany));
        assert!(t.find("c").is_none(), "a refused subscribe leaves no topic behind");
        assert!(t.find("price.eur").unwrap().1.policy.conflates());
        assert!(!t.find("a").unwrap().1.policy.conflates());
        assert!(t.is_subscribed(0, "a") && !t.is_subscribed(1, "a"));
    }
}
