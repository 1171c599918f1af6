"""What a route needs from the request beyond its parameters: the gateway it runs in, and the objects
named in its path as the caller may see them."""

from __future__ import annotations

from starlette.requests import Request

from batchgate.domain.principal import Principal
from batchgate.gateway import Gateway
from batchgate.services import batches
from batchgate.store.records import Row


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def visible_batch(request: Request, principal: Principal) -> Row:
    """The batch in the path (`batch_id`), if the caller may see it."""
    return await batches.find_batch(gateway_of(request), principal, request.path_params["batch_id"])
