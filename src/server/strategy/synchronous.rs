//! The synchronous strategy: Python's plain `TCPServer`.

use std::sync::Arc;

use crate::error::Result;
use crate::handler::PeerAddr;

use super::{LoopWaker, Strategy};
use crate::server::core::ServerCore;
use crate::server::incoming::Incoming;
use crate::server::options::ServerOptions;
use crate::server::transport::ServerSocket;

/// Python's plain `TCPServer` behaviour: each request is handled to the end
/// on the serving thread before the next is accepted.
#[derive(Debug, Default)]
pub struct Synchronous;

impl Strategy for Synchronous {
    const NAME: &'static str = "sync";

    fn new(_: &ServerOptions, _: LoopWaker) -> Result<Self> {
        Ok(Synchronous)
    }

    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        _: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        core.process(request, &peer);
    }
}
