"""The local WeChat simulator and fake API (sandbox.enabled in config.yaml)."""
