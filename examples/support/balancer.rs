//! The load-balancer flags `examples/echo.rs` and `examples/production.rs`
//! share (docs/scale-out.md), and how they configure a server. Included by
//! both with `#[path]`; not an example of its own.

use std::net::SocketAddr;
use std::time::Duration;

use socketserver::server::proxy::Cidr;
use socketserver::server::{ServerBuilder, Strategy, Transport};

/// PROXY protocol, reuse-port, drain and health flags.
#[derive(Debug, clap::Args)]
pub struct BalancerArgs {
    /// Expect a PROXY protocol v1/v2 header on every connection.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// How long a connection may take to send its PROXY header.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub proxy_timeout: Duration,
    /// Accept the PROXY header only from these balancer addresses or
    /// networks (`CIDR[,CIDR...]`, or the flag repeated), e.g.
    /// `10.0.0.0/24,::1`; a connection from any other TCP peer is closed
    /// unread. Without it, anyone who can reach the port directly can
    /// claim any client address.
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        requires = "proxy_protocol"
    )]
    pub proxy_from: Vec<Cidr>,
    /// Set SO_REUSEPORT: several instances may listen on the port.
    #[arg(long)]
    pub reuse_port: bool,
    /// How long connections in flight may finish after the port closes.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Answer HAProxy's agent-check on this address.
    #[arg(long)]
    pub health: Option<SocketAddr>,
    /// Keep accepting this long after reporting `drain` (default 1s with
    /// --health, else 0s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_notice: Option<Duration>,
}

impl BalancerArgs {
    /// Applies reuse-port, the drain timeout and notice, and the PROXY
    /// protocol to `builder`. The health port is the caller's to set (a
    /// restarted `production` inherits its socket).
    pub fn configure<T: Transport, S: Strategy>(&self, builder: &mut ServerBuilder<T, S>) {
        builder
            .allow_reuse_port(self.reuse_port)
            .drain_timeout(self.drain_timeout);
        if self.proxy_protocol {
            builder.proxy_protocol(Some(self.proxy_timeout));
            if !self.proxy_from.is_empty() {
                builder.proxy_protocol_from(self.proxy_from.iter().copied());
            }
        }
        let default_notice = if self.health.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        builder.drain_notice(self.drain_notice.unwrap_or(default_notice));
    }
}
