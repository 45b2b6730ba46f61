"""``GET /metrics``: the server's Prometheus metrics (``collector/metrics.py``).

Outside ``/api/``, so no credentials are asked (Prometheus scrapes it as it scrapes
node_exporter); it holds no job id and no user name. Who may scrape is the
``metrics_allow`` setting: addresses or networks of the TCP peer, everyone by default.
"""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client.exposition import choose_encoder

router = APIRouter(tags=["health"])

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``metrics_allow``'s default: every peer.
EVERYONE = frozenset({"0.0.0.0/0", "::/0"})


def metrics_networks(allow: tuple[str, ...]) -> tuple[Network, ...]:
    """Parse ``metrics_allow`` (validated by the settings) once, for :func:`allowed`."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in allow)


def allowed(host: str | None, networks: tuple[Network, ...]) -> bool:
    """Return True when the peer ``host`` is inside one of ``networks``."""
    if {str(network) for network in networks} >= EVERYONE:
        return True  # a Unix socket peer or a test client too, which have no address
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return any(address in network for network in networks)


@router.get("/metrics", summary="Prometheus metrics (no job or user data)",
            response_class=Response)
def metrics(request: Request) -> Response:
    """Answer the registry in the format the scraper asks for (OpenMetrics or text 0.0.4).

    Sync: the database totals are read here (in the threadpool), at most once per cache age.
    """
    host = request.client.host if request.client else None
    if not allowed(host, request.app.state.metrics_networks):
        raise HTTPException(status_code=403,
                            detail=f"/metrics is not open to {host} (metrics_allow)")
    encoder, content_type = choose_encoder(request.headers.get("accept"))
    return Response(content=encoder(request.app.state.metrics.registry),
                    media_type=content_type)
