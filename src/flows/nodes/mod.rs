//! Node operations on a running cluster: `node reimage` (wipe a live node and
//! bring it back) and `node rejoin` (bring back a dead or replaced node), each a
//! step table on the engine, journaled in `<state>/day2/<op>-<node>.json` and
//! resumable after a kill at any step boundary.
//!
//! Every call goes to a node directly (never through a VIP or an endpoint proxy),
//! so the operator can see which node receives it and a dead endpoint cannot
//! hide which member answered.
//!
//! - [`state`]: options, journal facts, the operation's context.
//! - [`watch`]: the waits (maintenance, reachable, running, etcd membership).
//! - [`common`]: the steps both share (guard, snapshot, apply … verify).
//! - [`reimage`], [`rejoin`]: the two runbooks.

pub mod common;
pub mod reimage;
pub mod rejoin;
pub mod state;
pub mod watch;

pub use reimage::reimage;
pub use rejoin::rejoin;
pub use state::{NodeFacts, NodeOp, NodeOpOptions, NodeOpReport};
