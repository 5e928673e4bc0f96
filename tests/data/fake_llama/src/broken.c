this is not C;
