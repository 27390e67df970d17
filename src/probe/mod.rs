//! `swarmtap probe`: active probes that ask a swarm what a passive tap did
//! not see. Torrents come from .torrent files, magnet links, bare info
//! hashes or a passive dataset; peers from trackers (HTTP, UDP), ut_pex and
//! explicit endpoints. Each peer is visited over TCP (plaintext, or MSE/PE
//! with RC4 or plaintext payload, falling back between them), its piece
//! count read from bitfield / have / have_all / have_none, and revisited on
//! a schedule until it crosses the completion threshold; failures back off
//! and retry. Confirmed downloads and their crossing time come from the
//! visit history.
//!
//! Concurrency: one current-thread tokio runtime of its own (never inside
//! the analysis pipeline's rayon pool). A single scheduler loop owns all
//! state; contacts and tracker announces run as tasks that report back over
//! a channel, so nothing is shared and nothing is locked. Rows go to the
//! same Parquet writer thread `analyze` uses, in the same tables.
//!
//! Safety: every destination passes the [`targets::AddrPolicy`] (private and
//! loopback ranges refused unless `--allow-private`, CIDR allow/deny), a
//! global concurrency cap and a rate limit bound what the probe sends, and
//! [`ProbeLimits`] bound what it keeps.


pub mod mse;
pub mod session;
pub mod targets;
pub mod tracker;
