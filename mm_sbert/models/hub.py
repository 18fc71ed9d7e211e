"""What went wrong talking to the Hugging Face Hub."""

from __future__ import annotations


def is_unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc`` or what caused it is a network failure (no DNS, refused, timed out, offline mode), as opposed
    to a refusal by the Hub (no permission, a bad repository name).

    The Hub client's transport errors (httpx's ``TransportError``, requests' ``ConnectionError``) are recognised by
    class name, so no HTTP library is imported here; ``HF_HUB_OFFLINE``'s error is a builtin ``ConnectionError``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {cls.__name__ for cls in type(exc).__mro__}
        if isinstance(exc, ConnectionError | TimeoutError) or names & {"TransportError", "ConnectionError"}:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
