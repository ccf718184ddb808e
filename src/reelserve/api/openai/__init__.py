"""The OpenAI Videos API facade: its routes (`routes.py`) and the mapping between its wire
shapes and reelserve's tasks (`mapping.py`)."""
