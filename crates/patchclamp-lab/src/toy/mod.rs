//! Small analytic models of learning dynamics, trained in plain f64: the three-factor toy of
//! the induction phase change and deep linear networks with critical periods.

pub mod critical;
pub mod phase;
pub mod protocols;
