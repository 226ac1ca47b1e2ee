"""The inference service: arrivals, bounded queue, dynamic batcher, executor and its process."""
