"""Imports every built-in filter module, so that each registers itself."""

from infini_gateway.filters import (  # noqa: F401
    basic_auth,
    drop,
    dump,
    echo,
    elasticsearch,
    http,
    intentions,
    logging,
    proxy,
    redirect,
    request_client_ip_filter,
    request_header_filter,
    request_method_filter,
    request_path_filter,
    set_request_header,
    set_response,
    set_response_header,
)
