"""The showcase's one model: rows for the db views to read and write."""

from __future__ import annotations

from django.db import models


class Item(models.Model):
    """A named value; migration 0002 seeds SEED_ROWS of them (ids 1 to 100)."""

    SEED_ROWS = 100

    name = models.CharField(max_length=100)
    value = models.IntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name
