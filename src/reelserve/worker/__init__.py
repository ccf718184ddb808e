"""The worker: claims queued work under a lease (task attempts and webhook deliveries) and
carries each item to its recorded outcome, so that none is lost or done twice."""
