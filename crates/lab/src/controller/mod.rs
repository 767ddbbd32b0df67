//! The controller for deployments on this machine: [`LabActuator`] (processes that outlive
//! the controller, probes over the deployment's TLS, plan steps), the controller's
//! [`Inventory`](meridian_controller::model::Inventory) of a lab description, the first start
//! of a deployment by its controller, and the `meridian controller` command
//! ([`command::run`]). The decisions are `meridian_controller`'s; this module is its hands.

pub mod actuator;
pub mod bootstrap;
pub mod child;
pub mod command;
pub mod inventory;
pub mod process;
pub mod view;

pub use actuator::LabActuator;
pub use child::{file_tail, ControllerChild};
pub use command::{url_file, ControllerArgs};
pub use view::ControlledDeployment;

/// The controller's own directory under the deployment's data directory: its database, its
/// replicas' URL files.
pub const CONTROLLER_DIR: &str = "controller";
