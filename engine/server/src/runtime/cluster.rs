//! The link between the workers and the message bus that fans topics out across nodes
//! (`Settings::bus`, crate `ringside-bus`, docs/cluster.md).
//!
//! Three places touch the bus, and only these:
//! - interest: a worker's `Topics` tells the bus when it gets its first subscriber of a topic
//!   and when its last one leaves (the bus counts per node, so the node is subscribed on the
//!   bus exactly while some worker has a subscriber);
//! - publishes made on this node (a handler's `publish`, [`Shared::publish`] from another
//!   thread) go to the bus once each, besides their local delivery;
//! - publishes from other nodes arrive through the sink below, which hands every worker its
//!   own copy, exactly as a publisher thread's publish does. They are never sent back to the
//!   bus: only the two paths above publish.
//!
//! What it does not do: order publishes of different nodes against each other, or retry what
//! the bus lost (a gap is logged and counted in `Stats::bus_gaps` and `Stats::bus_lost`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use ringside_bus::{BusError, BusHandle, Event};

use super::pubsub::Publication;
use super::{Command, Shared};

/// Connects to the bus at `url`. The sink holds only a weak reference to the workers' shared
/// state: that state owns the handle, and the bus must not keep it alive (nor itself, through
/// it) once the server is gone.
pub(crate) fn connect(url: &str, shared: Weak<Shared>) -> Result<BusHandle, BusError> {
    let shown = without_credentials(url);
    ringside_bus::connect(url, move |event| on_event(&shared, &shown, event))
}

/// Runs on a bus thread: must never block. Channel sends to the workers never do.
fn on_event(shared: &Weak<Shared>, url: &str, event: Event) {
    match event {
        Event::Delivery(d) => {
            if let Some(shared) = shared.upgrade() {
                shared.deliver_from_bus(Publication { topic: d.topic, key: d.key, frame: d.frame });
            }
        }
        Event::Gap(g) => {
            tracing::warn!(
                target: "ringside",
                topic = %g.topic,
                lost = g.lost(),
                origin = format_args!("{:016x}", g.origin),
                "the bus lost {} publishes on {} from node {:016x}",
                g.lost(),
                g.topic,
                g.origin
            );
            if let Some(shared) = shared.upgrade() {
                shared.bus_gaps.fetch_add(1, Ordering::Relaxed);
                shared.bus_lost.fetch_add(g.lost(), Ordering::Relaxed);
            }
        }
        Event::Connected { reconnects } => {
            tracing::info!(target: "ringside", bus = url, reconnects, "connected to the bus {url}");
        }
        Event::Disconnected { reason } => {
            tracing::info!(
                target: "ringside",
                bus = url,
                %reason,
                "lost the bus {url} ({reason}); reconnecting"
            );
        }
        _ => {}
    }
}

impl Shared {
    /// Hands a publish made on this node to the bus, for the other nodes. Never blocks; a
    /// publish the bus refuses (its queue is full, the frame is over its limit) is counted in
    /// the bus's statistics and delivered locally all the same.
    pub(crate) fn publish_to_bus(&self, p: &Publication) {
        if let Some(bus) = &self.bus {
            if let Err(e) = bus.publish(Arc::clone(&p.topic), p.frame.clone(), p.key) {
                tracing::debug!(target: "ringside", topic = %p.topic, error = %e, "not published on the bus");
            }
        }
    }

    /// A publish from another node: every worker gets its own copy, as from a publisher thread.
    fn deliver_from_bus(&self, p: Publication) {
        for worker in 1..self.workers() {
            self.send(worker, Command::Publish(vec![p.copied()]));
        }
        self.send(0, Command::Publish(vec![p]));
    }
}

/// `url` without a user name or password, for log lines.
fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_stay_out_of_the_logs() {
        assert_eq!(without_credentials("nats://u:secret@10.0.0.1:4222"), "nats://10.0.0.1:4222");
        assert_eq!(without_credentials("redis://:p@ss@h:6379/0"), "redis://h:6379/0");
        assert_eq!(without_credentials("nats://h:4222"), "nats://h:4222");
    }
}
