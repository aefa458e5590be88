"""The control plane's HTTP side: /metrics and the read-only web dashboard (issue 9)."""
