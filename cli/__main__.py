import sys

try:
    from .app import main
except KeyboardInterrupt:  # Ctrl-C while still importing (a loaded machine): one line too
    sys.stderr.write("chromasnap: interrupted; nothing partial was left in the store\n")
    sys.exit(130)

main()
