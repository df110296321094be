"""Pieces shared by the Smart Grid Load Balancer services: grid topology, HTTP conventions."""
