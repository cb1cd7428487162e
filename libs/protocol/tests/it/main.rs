//! samvad-protocol's integration tests: one binary, one module per concern.

mod ack;
mod errors;
mod golden_v3;
mod roundtrip;
mod snapshots;
mod support;
mod vartalap;
