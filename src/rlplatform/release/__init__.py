"""Models as releases: which version the clients of a game play, and the judge that moves it."""
