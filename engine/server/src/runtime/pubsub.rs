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
use std::hash::{BuildHasherDefault, Hasher};
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

/// Where one subscription sits: its index in the topic's subscribers and in the connection's
/// topics, so that either side removes it in O(1).
#[derive(Debug, Clone, Copy)]
struct Place {
    in_topic: u32,
    in_conn: u32,
}

/// One worker's topics.
///
/// Every operation is O(1) per subscription: a subscription is found by (connection, topic)
/// in one hash map that also holds its places, a connection's topics are a list (for the
/// close), and removing a subscription swaps the last one into its place on both sides and
/// fixes that one's place through the map. Closing a connection with N subscriptions costs
/// O(N), whatever the other connections hold.
#[derive(Debug)]
pub(crate) struct Topics {
    by_name: HashMap<Arc<str>, u32>,
    topics: Slab<Topic>,
    /// For each connection with subscriptions: its topics.
    of_conn: HashMap<usize, Vec<u32>>,
    /// Each subscription's places, by (connection, topic).
    places: HashMap<u64, Place, BuildHasherDefault<Mix>>,
    rules: Vec<TopicRule>,
    default: TopicPolicy,
    max_per_conn: usize,
    /// Told when a topic appears here and when it goes (this node's interest on the bus).
    bus: Option<BusHandle>,
}

/// The key of a subscription in [`Topics::places`]. Connection ids are slab indices below
/// `u32::MAX` (the backends encode them in 32 bits).
fn place_key(conn: usize, topic: u32) -> u64 {
    (conn as u64) << 32 | u64::from(topic)
}

/// A hasher for integer keys the worker makes itself (the `u64` subscription keys, the io_uring
/// backend's connection ids): the murmur3 finaliser, a few multiplications instead of SipHash's
/// rounds. Keys come from the worker's own slab and topic ids, not from clients, so flooding
/// resistance buys nothing here.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).rotate_left(5);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
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
            places: HashMap::default(),
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
        if let Some(&id) = self.by_name.get(name) {
            if self.places.contains_key(&place_key(conn, id)) {
                return Ok(false);
            }
        }
        let held = self.of_conn.get(&conn).map_or(0, Vec::len);
        if held >= self.max_per_conn {
            return Err(SubscribeError::TooMany);
        }
        let id = match self.by_name.get(name) {
            Some(&id) => id,
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
        let topics = self.of_conn.entry(conn).or_default();
        let topic = &mut self.topics[id as usize];
        let place =
            Place { in_topic: topic.subscribers.len() as u32, in_conn: topics.len() as u32 };
        topic.subscribers.push(conn);
        topics.push(id);
        self.places.insert(place_key(conn, id), place);
        Ok(true)
    }

    /// Unsubscribes `conn`; returns the topic's id if it was subscribed.
    pub fn unsubscribe(&mut self, conn: usize, name: &str) -> Option<u32> {
        let id = *self.by_name.get(name)?;
        let place = self.places.remove(&place_key(conn, id))?;
        if let Some(topics) = self.of_conn.get_mut(&conn) {
            let at = place.in_conn as usize;
            topics.swap_remove(at);
            if let Some(&moved) = topics.get(at) {
                if let Some(p) = self.places.get_mut(&place_key(conn, moved)) {
                    p.in_conn = at as u32;
                }
            }
            if topics.is_empty() {
                self.of_conn.remove(&conn);
            }
        }
        self.remove_subscriber(id, place.in_topic as usize);
        Some(id)
    }

    /// Removes every subscription of `conn` (it closed): O(its subscriptions).
    pub fn unsubscribe_all(&mut self, conn: usize) {
        let Some(topics) = self.of_conn.remove(&conn) else { return };
        for id in topics {
            if let Some(place) = self.places.remove(&place_key(conn, id)) {
                self.remove_subscriber(id, place.in_topic as usize);
            }
        }
    }

    /// Takes the subscriber at `index` out of topic `id` in O(1): the last one moves into its
    /// place, and that one's place is updated.
    fn remove_subscriber(&mut self, id: u32, index: usize) {
        let topic = &mut self.topics[id as usize];
        topic.subscribers.swap_remove(index);
        if let Some(&moved) = topic.subscribers.get(index) {
            if let Some(p) = self.places.get_mut(&place_key(moved, id)) {
                p.in_topic = index as u32;
            }
        }
        if topic.subscribers.is_empty() {
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
        self.places.contains_key(&place_key(conn, id))
    }

    /// The most lenient slow-consumer policy among `conn`'s topics (conflate, then drop, then
    /// close), or `None` without subscriptions: what the output budget applies to it.
    pub fn lenient_policy(&self, conn: usize) -> Option<SlowConsumer> {
        let rank = |p: SlowConsumer| match p {
            SlowConsumer::Conflate => 2,
            SlowConsumer::Drop => 1,
            _ => 0,
        };
        self.of_conn
            .get(&conn)?
            .iter()
            .map(|&id| self.topics[id as usize].policy.slow_consumer)
            .max_by_key(|&p| rank(p))
    }

    /// How many topics this worker has subscribers for.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Subscriptions held on this worker.
    #[cfg(test)]
    pub fn subscriptions(&self) -> usize {
        self.places.len()
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
        assert!(t.places.is_empty());
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

    #[test]
    fn random_churn_keeps_both_sides_consistent() {
        let mut t = topics(64);
        let mut model: std::collections::BTreeSet<(usize, u32)> = Default::default();
        let mut x: u64 = 0x9e37_79b9;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let conn = (x % 23) as usize;
            let topic = ((x >> 8) % 31) as u32;
            let name = format!("t{topic}");
            match (x >> 16) % 5 {
                0 => {
                    t.unsubscribe_all(conn);
                    model.retain(|&(c, _)| c != conn);
                }
                1 | 2 => {
                    assert_eq!(t.unsubscribe(conn, &name).is_some(), model.remove(&(conn, topic)));
                }
                _ => assert_eq!(t.subscribe(conn, &name), Ok(model.insert((conn, topic)))),
            }
        }
        assert_eq!(t.subscriptions(), model.len());
        for topic in 0..31u32 {
            let want: Vec<usize> =
                model.iter().filter(|&&(_, tp)| tp == topic).map(|&(c, _)| c).collect();
            assert_eq!(subscribers(&t, &format!("t{topic}")), want, "topic {topic}");
        }
        for &(conn, topic) in &model {
            assert!(t.is_subscribed(conn, &format!("t{topic}")));
        }
    }

    /// Seconds per removal when `conns` connections, each on the same `per_conn` topics, all
    /// close: the best of three runs.
    fn close_cost(conns: usize, per_conn: usize) -> f64 {
        let names: Vec<String> = (0..per_conn).map(|i| format!("shared.{i}")).collect();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut t = topics(per_conn);
            for conn in 0..conns {
                for name in &names {
                    t.subscribe(conn, name).unwrap();
                }
            }
            let started = std::time::Instant::now();
            for conn in 0..conns {
                t.unsubscribe_all(conn);
            }
            best = best.min(started.elapsed().as_secs_f64());
            assert_eq!((t.subscriptions(), t.len()), (0, 0));
        }
        best / (conns * per_conn) as f64
    }

    #[test]
    fn closing_a_connection_costs_its_own_subscriptions_only() {
        // Connections sharing 4,096 topics close: each removal moves one subscriber and fixes
        // its place through the map. A search of the moved subscriber's own list would make
        // each removal cost up to 4,096 steps, 64 times the cost with 64 topics each.
        let many = close_cost(40, 4096);
        let few = close_cost(40 * 64, 64);
        assert!(many < few * 6.0, "{:.0} ns vs {:.0} ns per removal", many * 1e9, few * 1e9);
    }
}
