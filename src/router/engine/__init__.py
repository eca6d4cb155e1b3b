"""The one engine that drives decide -> translate -> send -> retry / fall back -> meter, for the
library and the proxy alike: `engine` (the loop and streams), `client` (the `Router` library API),
`sync` (the sync bridge), `hooks` (what it calls on the monitor). May import the layers below:
transport, monitor, metering, core.
"""
