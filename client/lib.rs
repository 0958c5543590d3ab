//! A small typed client of the Dakota Content Service: connect, start a job and follow it to
//! its end across dropped connections. The generated API is [`dakota::api`]; the article
//! folder format is [`dakota::output`]. The `dakota` CLI is built on this crate.

pub mod session;
