//! What Samvad's HTTP routes share: the one table from errors to what a client sees
//! ([`ApiError`]: an HTTP status and a JSON body, or the gRPC door's code), every API error in
//! that JSON shape ([`json_errors`]), the authenticated caller ([`User`], whose credentials a
//! [`Gate`] checks), and the server the routes run on ([`serve`]).

mod error;
mod serve;
mod user;

pub use error::{ApiError, ErrorBody, json_errors};
pub use serve::serve;
pub use user::{Gate, User};
