"""Input channels: verify, decrypt and parse a callback into `InboundEvent`s."""
