# embed.cmake - turns the console page into a C source (a byte array), so
# the page is part of liboutbox and the monitor serves it without a file:
#   cmake -DIN=src/monitor/console.html -DOUT=console_html.c -P embed.cmake
# Pure CMake (file(READ ... HEX)): no xxd or other tool needed.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR len "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){16})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}.tmp"
  "/* Generated from src/monitor/console.html by src/monitor/embed.cmake: do not edit. */\n"
  "#include <stddef.h>\n"
  "extern const unsigned char outbox__console_html[];\n"
  "extern const size_t outbox__console_html_len;\n"
  "const unsigned char outbox__console_html[] = {\n${bytes}0};\n"
  "const size_t outbox__console_html_len = ${len};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
