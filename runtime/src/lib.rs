//! The runtime both binaries use, apart from what either does with data.
//!
//! | module | holds |
//! |---|---|
//! | [`settings`] | the fleet settings file (`fleet.toml`) and `TRIBUTARY_*` overrides; opening the backends they name |
//! | [`http`] | health endpoints and serving a router in the background |
//! | [`metrics`] | Prometheus text exposition, the `/metrics` route, duration buckets |
//! | [`logging`] | text or JSON logs on stderr |
//! | [`shutdown`] | the signals a daemon stops on |
//! | [`cpu`] | the one bridge from async code to the rayon pool, with panics contained |

pub mod cpu;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod settings;
pub mod shutdown;
