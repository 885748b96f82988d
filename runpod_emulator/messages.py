"""RunPod's own words: the error texts both APIs send, in one place so GraphQL and REST cannot drift apart.

Each text is tagged with how sure we are of it (from ``shared/reference/runpod-api.md``): recorded ones are
copied verbatim; where RunPod's text for a case was never recorded, the constant says so and clients must
classify by status code and shape, never by the sentence.
"""

from __future__ import annotations

# Create out of stock: recorded on GraphQL and REST v1 (v1 prefixes "create pod: "); REST v2 sends it as a
# 400 problem whose exact detail wording is not recorded beyond containing this sentence.
NO_INSTANCES = (
    "There are no longer any instances available with the requested specifications. Please refresh and try again."
)
# Resume/start on a full host: recorded on GraphQL and REST v1; on v2 reported by third parties (400).
NOT_ENOUGH_FREE_GPUS = "There are not enough free GPUs on the host machine to start this pod."
# Create on a host that cannot fit the pod: the console's wording (REST v1 said "...deploy your pod. Please
# try a different machine"); a capacity failure, not a bad request.
NO_RESOURCES = "This machine does not have the resources to deploy this pod"
# Create with CUDA constraints no free host meets.
NO_CUDA_HOST = "No compatible CUDA host is currently available."
# Seen via REST; GraphQL is assumed to send the same sentence.
LOW_BALANCE = "Your account balance is too low to rent a pod. Please add funds to your account."
# The generic backend failure, recorded with extensions.code INTERNAL_SERVER_ERROR.
INTERNAL_ERROR = "Something went wrong. Please try again later or contact support."
# The GraphQL ``rate_limit`` fault's message inside an ``errors`` body. Not recorded: RunPod was seen sending a
# bare {"message": ...} body instead (the ``rate_limit_recorded`` fault); kept for clients written against it.
RATE_LIMITED = "Too Many Requests: rate limit exceeded, retry after 1 seconds"
# The bare-body 429 on GraphQL: the shape {"message": ...} is recorded (SDK 1.12.0 raises KeyError('data')
# on it); the sentence itself is not.
RATE_LIMITED_BARE = "Too Many Requests"
# Unknown pod id. Not recorded for either API (GraphQL's ``pod`` query answers null, which is recorded);
# this wording is the emulator's own.
POD_NOT_FOUND = 'Pod "{pod_id}" not found.'

# A gateway failure in front of the API: Cloudflare's HTML page, not JSON (the SDK raises JSONDecodeError).
GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
# The pod proxy's answer when a request takes longer than its 100 s limit (Cloudflare's 524).
PROXY_TIMEOUT_HTML = "<html><head><title>524 A timeout occurred</title></head><body>A timeout occurred</body></html>"
