//! Host port forwarding into a VM's user-mode network, added at run time through QEMU's
//! human monitor: `hostfwd_add hostnet0 tcp:ADDRESS:HOST-:GUEST` (ADDRESS: the daemon's
//! `ports_address` setting, 127.0.0.1 by default). Works after a boot
//! and after a restore alike (the user network keeps no state across a save; the guest's
//! address does), so every session gets its own free host port instead of ports baked
//! into the overlay as Elijah did (the guest reaches the host through slirp's NAT).
//!
//! The host port is found by binding ADDRESS:0 and closing the socket, so another
//! process can take it before QEMU binds it: QEMU then answers with an error text, and
//! the forward is retried on a new port.

use std::net::{Ipv4Addr, TcpListener};

use super::{Hypervisor, VirtError};

/// QEMU's name for the netdev of the domain's first `<interface>` (libvirt's alias
/// `net0` → netdev `hostnet0`).
pub const NETDEV: &str = "hostnet0";

/// Attempts before giving up when the chosen port was taken meanwhile.
const ATTEMPTS: usize = 5;

/// Forwards a free TCP port of `address` to `guest_port` of the guest (user network
/// address 10.0.2.15) of running domain `name`, and returns that host port.
pub async fn forward_port(
    hv: &Hypervisor,
    name: &str,
    address: Ipv4Addr,
    guest_port: u16,
) -> Result<u16, VirtError> {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let host_port = free_port(address)?;
        let command = format!("hostfwd_add {NETDEV} tcp:{address}:{host_port}-:{guest_port}");
        // HMP answers nothing on success and an error text on failure (as a successful
        // monitor call), e.g. "Could not set up host forwarding rule 'tcp:...'".
        let output = hv.hmp(name, &command).await?;
        let output = output.trim();
        if output.is_empty() {
            tracing::debug!(domain = name, host_port, guest_port, "port forwarded");
            return Ok(host_port);
        }
        if !output.contains("Could not set up host forwarding rule") {
            return Err(VirtError::PortForward {
                guest_port,
                message: output.to_string(),
            });
        }
        tracing::debug!(
            domain = name,
            host_port,
            output,
            "host port taken, retrying"
        );
        last = output.to_string();
    }
    Err(VirtError::PortForward {
        guest_port,
        message: format!("no free host port after {ATTEMPTS} attempts: {last}"),
    })
}

/// A TCP port of `address` that was free a moment ago.
fn free_port(address: Ipv4Addr) -> Result<u16, VirtError> {
    let listener = TcpListener::bind((address, 0)).map_err(VirtError::Io)?;
    Ok(listener.local_addr().map_err(VirtError::Io)?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        for address in [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED] {
            let port = free_port(address).unwrap();
            assert_ne!(port, 0);
            TcpListener::bind((address, port)).unwrap();
        }
    }

    #[tokio::test]
    async fn missing_domain_is_not_found() {
        let hv = Hypervisor::new("test:///default");
        let err = forward_port(&hv, "cloudlet-none", Ipv4Addr::LOCALHOST, 80)
            .await
            .unwrap_err();
        assert!(matches!(err, VirtError::NotFound { .. }), "{err:?}");
    }
}
