//! gossipfed's learning side: everything a node needs to train, ship and combine
//! remaining-useful-life (RUL) models without moving data.
//!
//! * [`params`]: [`ParamSet`], a model as one flat `f32` vector plus layout, with a
//!   compact bounded codec and a BLAKE3 content address.
//! * [`aggregate`]: FedAvg (batch and streaming), coordinate-wise median, trimmed
//!   mean, and update validation; pure functions.
//! * [`data`]: run-to-failure [`Trajectory`]s, the federated min-max [`Scaler`],
//!   and windowing into a [`Dataset`] with capped RUL targets.
//! * [`synthetic`]: a seeded run-to-failure generator for demos and tests.
//! * [`cmapss`]: reader for the NASA C-MAPSS turbofan files.
//! * [`net`]: the burn models (the deep CNN of Li et al. 2018, an LSTM) and the
//!   conversion between burn modules and [`ParamSet`]s.
//! * [`train`]: cancellable local training (Adam, optional FedProx), evaluation and
//!   prediction on burn's flex CPU backend.
//! * [`metrics`]: RMSE, MAE, PHM08 score.
//! * [`fedsim`]: in-process federated simulation (client splits, FedAvg/FedProx,
//!   federated scaler) and centralized training, with early stopping on held-out
//!   engines.
//! * [`modelfile`]: a self-contained model file (architecture, window, sensors,
//!   scaler, weights) for `fedctl predict`.
//!
//! Nothing here does I/O or depends on the protocol: the daemon and simnet call these
//! functions and move the bytes.

pub mod aggregate;
pub mod cmapss;
pub mod data;
pub mod fedsim;
pub mod metrics;
pub mod modelfile;
pub mod net;
pub mod params;
mod rng;
pub mod synthetic;
pub mod train;

pub use aggregate::{
    AggregateError, Strategy, StreamingFedAvg, ValidationError, coordinate_median, fedavg,
    trimmed_mean, validate_update,
};
pub use data::{
    Dataset, Scaler, Trajectory, WindowConfig, count_windows, final_windows_padded, last_windows,
    make_windows, shard_machines, split_machines,
};
pub use metrics::Metrics;
pub use net::{Arch, ModelSpec, init_params, try_init_params};
pub use params::{ParamError, ParamSet, TensorSpec};
pub use synthetic::{SyntheticConfig, generate};
pub use train::{
    EpochControl, EpochEnd, TrainConfig, TrainError, TrainOutcome, evaluate, predict, train_local,
    train_with_hook,
};
