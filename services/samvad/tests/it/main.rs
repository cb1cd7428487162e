//! End-to-end tests of the all-in-one server: a real server on port 0, real WebSocket and HTTP
//! clients, assertions about what users see.

// Helpers outside #[test] functions panic on purpose when the server misbehaves.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The providers' servers some tests start (a JWKS, FCM) are fakes, not the API that
// /openapi.json describes.
#![allow(clippy::disallowed_methods)]

mod assets;
mod auth;
mod backends;
mod bad_input;
mod chat;
mod cluster;
mod config;
mod devices;
mod durability;
mod garbage;
mod groups;
mod grpc;
mod history;
mod login;
mod mqtt;
mod openapi;
mod presence;
mod profiles;
mod push;
mod rest;
mod support;
mod traces;
