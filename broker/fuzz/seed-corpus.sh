#!/usr/bin/env bash
# Seeds the fuzz corpus with every webhook fixture, prefixed with the byte
# that selects its channel (the `Channel` enum number, default content type).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
corpus=corpus/normalize
mkdir -p "$corpus"
for fixture in ../tests/fixtures/webhooks/*; do
  name=$(basename "$fixture")
  case "$name" in
    whatsapp_*) byte='\001' ;;
    messenger_*) byte='\002' ;;
    instagram_*) byte='\003' ;;
    sms_*) byte='\004' ;;
    webchat_*) byte='\005' ;;
    *) continue ;;
  esac
  { printf "$byte"; cat "$fixture"; } > "$corpus/$name"
done
echo "seeded $(ls "$corpus" | wc -l) inputs into $corpus"
