"""``towerrec data ...`` commands (placeholder until the data layer lands)."""
