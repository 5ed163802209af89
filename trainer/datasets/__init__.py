"""Datasets: where they live (`locate`), where they come from (`sources`), how they are read
(`idx`, `mnist`, `scene`) and the cache of decoded arrays (`cache`)."""
