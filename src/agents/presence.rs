//! Presence shared by several nodes: each node's queue follows the settings made on the
//! others, read from the shared store, without a late reading undoing a newer local setting.
//! Pure: the store's rows and this node's settings in, changes to the queue out.

use super::{AgentInput, AgentQueue, Presence};
use crate::callbacks::UnixMs;
use crate::nodes::PresenceRow;
use std::collections::HashMap;
use std::time::Instant;
use tracing::info;

/// Presence as last set for each agent (here or on another node), and when: a store reading
/// older than a setting made here (still being written) does not undo it.
#[derive(Default)]
pub struct SharedPresence {
    latest: HashMap<String, (Presence, UnixMs)>,
}

impl SharedPresence {
    /// A setting made on this node (console, API), at `at` by this node's clock.
    pub fn set_here(&mut self, agent: &str, presence: Presence, at: UnixMs) {
        self.latest.insert(agent.to_string(), (presence, at));
    }

    /// Applies the store's reading to the queue: each agent it knows takes the latest setting.
    pub fn follow(&mut self, rows: Vec<PresenceRow>, queue: &mut AgentQueue, now: Instant) {
        for row in rows {
            let newer = self
                .latest
                .get(&row.agent)
                .is_none_or(|(_, at)| row.set_at >= *at);
            if newer {
                self.latest.insert(row.agent, (row.presence, row.set_at));
            }
        }
        for (agent, (presence, _)) in &self.latest {
            if queue.presence(agent).is_some_and(|p| p != *presence) {
                info!(%agent, presence = presence.as_str(), "presence set on another node: followed here");
                queue.agent_input(
                    AgentInput::SetPresence {
                        agent: agent.clone(),
                        presence: *presence,
                    },
                    now,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(agent: &str, presence: Presence, set_at: UnixMs) -> PresenceRow {
        PresenceRow {
            agent: agent.into(),
            presence,
            set_at,
        }
    }

    #[test]
    fn a_setting_from_another_node_is_followed_unless_one_here_is_newer() {
        let now = Instant::now();
        let mut queue = AgentQueue::new(["ann", "bob"], now);
        let mut shared = SharedPresence::default();
        // Bob was set away here at 20 s; the store still has him available from 10 s (the
        // write is on its way): he stays away. Ann was set away on another node: followed.
        shared.set_here("bob", Presence::Away, 20_000);
        queue.agent_input(
            AgentInput::SetPresence {
                agent: "bob".into(),
                presence: Presence::Away,
            },
            now,
        );
        shared.follow(
            vec![
                row("ann", Presence::Away, 15_000),
                row("bob", Presence::Available, 10_000),
            ],
            &mut queue,
            now,
        );
        assert_eq!(queue.presence("ann"), Some(Presence::Away));
        assert_eq!(queue.presence("bob"), Some(Presence::Away));
        // A later setting on another node wins.
        shared.follow(
            vec![row("bob", Presence::Available, 30_000)],
            &mut queue,
            now,
        );
        assert_eq!(queue.presence("bob"), Some(Presence::Available));
        // An agent this node does not have is remembered, and changes nothing here.
        shared.follow(vec![row("carol", Presence::Away, 30_000)], &mut queue, now);
        assert_eq!(queue.presence("carol"), None);
    }
}
